"""Independent, named random streams derived from the scenario seed.

Each stream is a ``numpy.random.Generator`` keyed by names (a session id and a purpose, e.g.
``("sim-00042", "llm")``). The key is a BLAKE2 hash of the seed and the names, never Python's ``hash``, so
streams are the same in every process; adding a session adds streams and changes no other stream's draws.
Philox is counter-based and takes its 128-bit key directly, which makes thousands of independent streams
cheap to create (no SeedSequence mixing per stream).

>>> a = Streams(7).generator("s1", "stt").random()
>>> a == Streams(7).generator("s1", "stt").random()
True
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.random.bit_generator import ISeedSequence


class Streams:
    """Factory of named generators for one seed."""

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def generator(self, *names: str) -> np.random.Generator:
        """The generator for these names; the same seed and names always give the same stream."""
        digest = hashlib.blake2b("\x1f".join((str(self.seed), *names)).encode("utf-8"), digest_size=16).digest()
        return np.random.Generator(np.random.Philox(_Key(digest)))


class _Key(ISeedSequence):
    """Hands Philox its 128-bit key as it is. ``Philox(key=k)`` gives the same generator but first seeds a
    throwaway SeedSequence from the OS's entropy (about three times the cost of the whole generator
    otherwise; the model makes five per session).

    >>> digest = bytes(range(16))
    >>> a = np.random.Philox(_Key(digest)).random_raw(3)
    >>> b = np.random.Philox(key=int.from_bytes(digest, "little")).random_raw(3)
    >>> bool((a == b).all())
    True
    """

    __slots__ = ("_words",)

    def __init__(self, digest: bytes) -> None:
        self._words = np.frombuffer(digest, dtype="<u8").astype(np.uint64)  # Philox's key: low word first

    def generate_state(self, n_words: int, dtype: type = np.uint32) -> np.ndarray:
        if n_words != len(self._words) or dtype is not np.uint64:  # only Philox's own request is expected
            raise ValueError(f"a Philox key is {len(self._words)} 64-bit words, not {n_words} of {dtype}")
        return self._words.copy()
