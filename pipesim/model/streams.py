"""Independent, named random streams derived from the scenario seed.

Each stream is a ``numpy.random.Generator`` keyed by names (a session id and a purpose, e.g.
``("sim-00042", "llm")``). Keys are hashed with CRC-32, never Python's ``hash``, so streams are the
same in every process; adding a session adds streams and changes no other stream's draws.

>>> a = Streams(7).generator("s1", "stt").random()
>>> a == Streams(7).generator("s1", "stt").random()
True
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class Streams:
    """Factory of named generators for one seed."""

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def generator(self, *names: str) -> np.random.Generator:
        """The generator for these names; the same names always give the same stream."""
        seq = np.random.SeedSequence(self.seed, spawn_key=tuple(_key(n) for n in names))
        return np.random.Generator(np.random.PCG64(seq))
