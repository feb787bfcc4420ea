"""The bot's synthetic voice: speech-like 16-bit PCM for the RTVI dialect to send while the bot speaks.

Not speech, but what a frontend's audio path needs to see speech: syllables and pauses following the
reply's words (one syllable per vowel group, a short gap between syllables, a longer one between words,
a pause after the sentence), each syllable a half-sine swell of a voiced buzz (harmonics of a pitch up to
4 kHz) with a breath of noise, peaking at -10 to -6 dBFS so that a level meter or a visualiser moves; silence
between syllables. The plan (pitch, durations, loudness) is drawn once per reply from the generator it is
given (the RTVI dialect's ``streams.generator(session, "rtvi-audio", turn)``): the same seed gives the same
samples, and drawing them changes no other number. When the bot speaks longer than the words last, the
plan repeats.

Format: :data:`SAMPLE_RATE` Hz, mono, little-endian int16, as a Pipecat bot sends it through its WebSocket
transport at the rate ``@pipecat-ai/websocket-transport`` plays (its ``PLAYER_SAMPLE_RATE``, and
``WavMediaManager``'s), in frames of :data:`FRAME_SAMPLES` samples (40 ms).

Cheap by construction: the buzz and the noise are precomputed (every pitch's period divides a frame, so
the buzz is the same array each frame), and frames are made eight at a time: one envelope on a coarse
grid, an interpolation, a multiplication.

>>> voice = BotVoice(["Sure", "your", "order", "ships", "today."], np.random.default_rng(1))
>>> pcm = voice.frame(0)
>>> len(pcm) == FRAME_SAMPLES * 2
True
>>> voice.frame(9) != pcm and voice.frame(0) == pcm        # the same frame, the same samples
True
>>> gap = int(voice.syllables[0][1] / 0.001) + 1           # a millisecond-long frame after the first syllable
>>> bool(np.frombuffer(voice.frame(gap, span=0.001), "<i2").any())
False
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["FRAME_S", "FRAME_SAMPLES", "NUM_CHANNELS", "SAMPLE_RATE", "BotVoice", "syllable_count"]

#: What ``@pipecat-ai/websocket-transport`` plays (it reads only the samples: the rate is its own, 24 kHz).
SAMPLE_RATE = 24_000
NUM_CHANNELS = 1
#: 40 ms a frame, as a Pipecat bot sends them (``audio_out_10ms_chunks`` x 10 ms, 4 by default).
FRAME_SAMPLES = SAMPLE_RATE * 40 // 1000
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
#: Pitches (Hz) whose period (240, 192, 160, 120 samples) divides a frame: a frame of buzz is whole periods.
_PITCHES = (100, 125, 150, 200)
#: The envelope's peak for the loudest syllable, full scale 1 (-6 dBFS; others from 0.6 times that).
_PEAK = 0.5
_NOISE = 0.08  # the breath under the buzz, relative to it
_BLOCK = 24  # frames made at once (cheaper than one by one); the noise repeats after as many
_GRID = 8  # envelope points per frame (linear in between): a point every 5 ms of audio
_VOWELS = re.compile(r"[aeiouy]+", re.IGNORECASE)


@functools.lru_cache(maxsize=len(_PITCHES))
def _sources(pitch: int) -> np.ndarray:
    """``_BLOCK`` frames of buzz plus noise at ``pitch`` (float32, in 16-bit units at peak 1), end to end."""
    n = np.arange(FRAME_SAMPLES)
    harmonics = np.arange(1, 4000 // pitch + 1)
    # Harmonics falling off as a voice's do (-6 dB an octave), with a lift around 500-1500 Hz (a vowel's formants).
    gains = (1 / harmonics) * (1 + 1.5 * np.exp(-(((harmonics * pitch) - 900) / 500) ** 2))
    buzz = gains @ np.sin(2 * np.pi * np.outer(harmonics, n) * pitch / SAMPLE_RATE)
    buzz /= np.abs(buzz).max()
    noise = np.random.default_rng(pitch).uniform(-1, 1, (_BLOCK, FRAME_SAMPLES))  # fixed: a texture
    return ((buzz + _NOISE * noise) * (32767 / (1 + _NOISE))).astype(np.float32).ravel()


def syllable_count(word: str) -> int:
    """Syllables of a word, roughly: its vowel groups (at least one).

    >>> [syllable_count(w) for w in ("order", "ships", "tomorrow", "I", "hmm")]
    [2, 1, 3, 1, 1]
    """
    return max(1, len(_VOWELS.findall(word)))


class BotVoice:
    """One reply, spoken: a plan of syllables from its ``words`` and ``rng`` (drawn here, once), and the
    frames of it (:meth:`frame`). Times are simulated seconds since the bot started speaking."""

    def __init__(self, words: Sequence[str], rng: np.random.Generator) -> None:
        words = [w for w in words if w] or ["hello."]
        self.pitch = int(rng.choice(_PITCHES))
        counts = [syllable_count(w) for w in words]
        total = sum(counts)
        durations = rng.uniform(0.12, 0.24, total)
        loudness = rng.uniform(0.6, 1.0, total)
        gaps = rng.uniform(0.02, 0.05, total)  # between the syllables of a word
        word_ends = np.cumsum(counts) - 1
        gaps[word_ends] = rng.uniform(0.08, 0.16, len(words))  # between words
        gaps[-1] = 0.45  # after the sentence
        ends_at = np.cumsum(durations + gaps)
        starts = ends_at - durations - gaps
        #: (start, end, peak) of each syllable, seconds and full scale 1.
        self.syllables = [(float(s), float(s + d), float(p * _PEAK)) for s, d, p in zip(
            starts, durations, loudness, strict=True)]
        #: One pass through the words, seconds (the plan repeats after it).
        self.duration = float(ends_at[-1])
        self._starts, self._per_length, self._peaks = starts, 1 / durations, loudness * _PEAK
        self._sources = _sources(self.pitch)
        self._block: tuple[int, float, bytes] | None = None  # (first frame, span, its PCM): the last one made

    def envelope(self, t: np.ndarray) -> np.ndarray:
        """The amplitude (full scale 1) at times ``t`` (>= 0): a half-sine per syllable, 0 between them.

        >>> voice = BotVoice(["order"], np.random.default_rng(0))
        >>> (start, end, peak), _ = voice.syllables
        >>> [round(float(a / peak), 3) for a in voice.envelope(np.array([start, (start + end) / 2, end + 0.001]))]
        [0.0, 1.0, 0.0]
        """
        t = t % self.duration
        i = np.searchsorted(self._starts, t, side="right") - 1
        u = (t - self._starts[i]) * self._per_length[i]  # 0 <= u: the first syllable starts at 0
        return np.where(u < 1, self._peaks[i] * np.sin(np.pi * u), 0.0)

    def frame(self, n: int, span: float = FRAME_S) -> bytes:
        """Frame ``n`` (from 0) of the reply cut in frames of ``span`` seconds: :data:`FRAME_SAMPLES` samples of
        16-bit PCM holding the speech from ``n * span`` to ``(n + 1) * span`` (``span`` larger than
        :data:`FRAME_S`: fast-forwarded, as at a speed above 1; the pitch stays, the syllables are shorter)."""
        first = n - n % _BLOCK
        if self._block is None or self._block[:2] != (first, span):
            # The envelope on a grid of _GRID points a frame, every point an integer number of steps from
            # the start: a frame's samples do not depend on the block it was made in.
            grid = self.envelope((first * _GRID + _GRID_STEPS) * (span / _GRID)).astype(np.float32)
            amplitude = grid[:-1, None] + (grid[1:] - grid[:-1])[:, None] * _STEP_FRACTIONS  # linear in between
            self._block = (first, span, (amplitude.ravel() * self._sources).astype("<i2").tobytes())
        offset = (n - first) * FRAME_SAMPLES * 2
        return self._block[2][offset:offset + FRAME_SAMPLES * 2]


_GRID_STEPS = np.arange(_BLOCK * _GRID + 1, dtype=np.float64)
_STEP_FRACTIONS = np.arange(FRAME_SAMPLES // _GRID, dtype=np.float32) / (FRAME_SAMPLES // _GRID)
