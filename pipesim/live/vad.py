"""A microphone that ends turns: WebRTC's voice activity detector over a client's audio, and the audio's quality.

With ``pipesim serve --user-audio vad`` an RTVI session's user speaks when the client's microphone does: a
:class:`Detector` per session is fed the 16-bit PCM frames the client sends (any rate, any channel count) and
says what it heard, in audio time (seconds of audio fed so far):

* ``started``: speech began. A frame is *voiced* when WebRTC's VAD (``webrtcvad-wheels``, no model to
  download) calls it speech **and** its level is at least :data:`SPEECH_FLOOR_DBFS`; speech starts after
  :data:`START_MS` of consecutive voiced frames (a click or a cough's onset is not an utterance).
* ``speaking``: a running report every ``report_every_s`` of the utterance (the scenario's
  ``audio.metadata_interval_s``), as the model's own users report their buffer and running quality.
* ``ended``: :data:`HANGOVER_MS` of consecutive unvoiced frames after the last voiced one (the pauses
  between words are shorter); so the end is heard one hangover after the voice stopped, as a real bot's
  VAD hears it. An utterance is cut at ``max_utterance_s``.
* ``muted``: while nobody speaks, a ``report_every_s`` window of audio below :data:`MUTED_DBFS` (digital
  silence: a muted or dead microphone), once until the next utterance; its quality is 0.

Each event carries the utterance's bytes (as the client sent them) and its quality, from the same samples:
the level of its voiced frames (RMS, dBFS) and the share of its samples at full scale (clipped). The quality
is :func:`audio_quality`: 1 for a clean voice, falling to 0 for a voice too quiet to hear or a clipping
microphone, so both show on the dashboard as poor audio (the scenario's ``quality.poor_threshold``).

The detector runs at :data:`VAD_RATE_HZ`: other rates are resampled (``scipy.signal.resample_poly``) and
channels averaged. It is pure: samples in, events out; no clock, no I/O.

>>> import numpy as np
>>> t = np.arange(16_000) / 16_000                              # one second of a 150 Hz voice at -20 dBFS
>>> voice = (0.1 * 32768 * np.sign(np.sin(2 * np.pi * 150 * t))).astype("<i2")
>>> silence = np.zeros(16_000, "<i2")
>>> detector = Detector(report_every_s=None)
>>> heard = detector.feed(np.concatenate([silence, voice, silence]).tobytes(), 16_000, 1)
>>> [(h.kind, round(h.edge_s, 2), round(h.at_s, 2)) for h in heard]
[('started', 0.99, 1.08), ('ended', 2.01, 2.31)]
>>> round(heard[-1].level_dbfs), heard[-1].quality
(-20, 0.9998)
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

from pipesim.scenario import MAX_UTTERANCE_S

#: The rate the detector hears at (WebRTC's VAD takes 8, 16, 32 or 48 kHz; Pipecat's clients send 16 kHz).
VAD_RATE_HZ = 16_000
#: WebRTC's VAD mode, 0 (least) to 3 (most aggressive in calling audio non-speech).
AGGRESSIVENESS = 2
#: Length of one frame the VAD classifies (WebRTC takes 10, 20 or 30 ms).
FRAME_MS = 30
#: Consecutive voiced audio that starts an utterance.
START_MS = 90
#: Consecutive unvoiced audio after the last voiced frame that ends an utterance (longer than the pauses
#: between words; a real bot waits about as long before it calls the user silent).
HANGOVER_MS = 300
#: A frame quieter than this is never voiced, whatever the VAD says (WebRTC's VAD calls any steady sound
#: speech while it adapts, room noise included).
SPEECH_FLOOR_DBFS = -55.0
#: Audio below this level while nobody speaks is a muted (or dead) microphone.
MUTED_DBFS = -80.0
#: The level score is one half at this speech level (RMS of the voiced frames, dBFS) ...
QUIET_DBFS = -45.0
#: ... and rises from 0.12 to 0.88 within ± this many dB of it (a logistic curve).
LEVEL_WIDTH_DB = 3.0
#: A sample at or above this magnitude counts as clipped (-0.2 dBFS; speech at a sound level stays far below).
CLIPPED_AT = 32_000
#: The clipping score falls linearly from 1 (no clipped samples) to 0 when this share of samples is clipped.
CLIPPED_SHARE_ZERO = 0.02

_FULL_SCALE = 32768.0


def level_dbfs(sum_squares: float, samples: int) -> float:
    """The RMS level in dBFS (0: a full-scale square wave) of samples whose squares add up to ``sum_squares``.

    >>> level_dbfs(0.0, 10), level_dbfs(10 * 32768.0 ** 2, 10)
    (-inf, 0.0)
    """
    if samples <= 0 or sum_squares <= 0.0:
        return -math.inf
    return 10.0 * math.log10(sum_squares / samples / _FULL_SCALE ** 2)


def audio_quality(level: float, clipped_share: float) -> float:
    """The quality the state manager scores (0..1, 4 places) of a voice at ``level`` dBFS (its voiced frames)
    with ``clipped_share`` of its samples clipped: a logistic level score (:data:`QUIET_DBFS`,
    :data:`LEVEL_WIDTH_DB`) times a clipping score (:data:`CLIPPED_SHARE_ZERO`).

    >>> audio_quality(-20.0, 0.0), audio_quality(-45.0, 0.0), audio_quality(-math.inf, 0.0)
    (0.9998, 0.5, 0.0)
    >>> audio_quality(-3.0, 0.01), audio_quality(-1.0, 0.05)
    (0.5, 0.0)
    """
    if level == -math.inf:
        return 0.0
    level_score = 1.0 / (1.0 + math.exp(-max(-700.0, (level - QUIET_DBFS) / LEVEL_WIDTH_DB)))
    clip_score = max(0.0, 1.0 - clipped_share / CLIPPED_SHARE_ZERO)
    return round(level_score * clip_score, 4)


class Heard(NamedTuple):
    """What the detector heard (see the module's docstring for the kinds).

    ``at_s``: audio time when the detector knew it (the end of the frame that decided); ``edge_s``: where it
    is in the audio (``started``: the first voiced frame's start; ``ended``: the last voiced frame's end;
    else ``at_s``). ``audio_bytes``: the utterance's audio so far as the client sent it (0 for ``muted``);
    ``quality``, ``level_dbfs``, ``clipped_share``: of the utterance so far (of the window for ``muted``).
    """

    kind: str
    at_s: float
    edge_s: float
    audio_bytes: int
    quality: float
    level_dbfs: float
    clipped_share: float


class _Frame(NamedTuple):
    """One classified frame: voiced or not, and the sums its share of the quality needs."""

    voiced: bool
    sum_squares: float
    clipped: int


class _Resampler:
    """A stream at ``rate`` to :data:`VAD_RATE_HZ`, a block at a time, with no drift and no seams.

    Each block is ``resample_poly``'s (a polyphase filter), given ``context`` input samples of the past and of
    the future beside it, so that its filter sees the signal it would see over the whole stream; the last
    ``context`` samples wait for the next block (a few milliseconds; 10 ms at 44.1 kHz). Blocks are whole
    multiples of the rates' ratio, so the output keeps exactly in step with the input.
    """

    def __init__(self, rate: int) -> None:
        g = math.gcd(VAD_RATE_HZ, rate)
        self.rate, self.up, self.down = rate, VAD_RATE_HZ // g, rate // g
        half = math.ceil(10 * max(self.up, self.down) / self.up) + 1  # resample_poly's filter, in input samples
        self.context = self.down * math.ceil(half / self.down)
        self._held = np.zeros(self.context)  # the past (silence before the stream) and what waits

    def feed(self, samples: np.ndarray) -> np.ndarray:
        from scipy.signal import resample_poly

        held = np.concatenate([self._held, samples])
        ready = len(held) - 2 * self.context
        ready -= ready % self.down
        if ready <= 0:
            self._held = held
            return np.empty(0)
        out = resample_poly(held[:ready + 2 * self.context], self.up, self.down)
        self._held = held[ready:]
        first = self.context * self.up // self.down
        return out[first:first + ready * self.up // self.down]


class Detector:
    """Voice activity of one microphone, in audio time (see the module's docstring).

    ``report_every_s``: seconds of audio between ``speaking`` reports and between muted checks (None: neither);
    the other parameters default to the module's documented constants.

    >>> Detector(frame_ms=25)
    Traceback (most recent call last):
    ...
    ValueError: frame_ms must be 10, 20 or 30 (WebRTC's VAD frames), got 25
    """

    def __init__(self, *, report_every_s: float | None = 0.25, aggressiveness: int = AGGRESSIVENESS,
                 frame_ms: int = FRAME_MS, start_ms: float = START_MS, hangover_ms: float = HANGOVER_MS,
                 speech_floor_dbfs: float = SPEECH_FLOOR_DBFS, max_utterance_s: float = MAX_UTTERANCE_S) -> None:
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30 (WebRTC's VAD frames), got {frame_ms}")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        import webrtcvad  # here: only a server that hears microphones pays for it

        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_s = frame_ms / 1000.0
        self._frame_len = VAD_RATE_HZ * frame_ms // 1000
        self._start_frames = max(1, math.ceil(start_ms / frame_ms - 1e-9))
        self.hangover_frames = max(1, math.ceil(hangover_ms / frame_ms - 1e-9))
        self._floor = _FULL_SCALE ** 2 * 10.0 ** (speech_floor_dbfs / 10.0) * self._frame_len  # as a sum of squares
        self._max_frames = max(1, math.floor(max_utterance_s / self.frame_s))
        self._report_frames = (None if report_every_s is None
                               else max(1, round(report_every_s / self.frame_s)))
        self._pending = np.empty(0, np.int16)
        self._resampler: _Resampler | None = None
        self._bytes_per_s = 2.0 * VAD_RATE_HZ  # of the client's format (the latest frame's)
        #: Frames classified so far (audio time = frames * frame_s).
        self.frames = 0
        #: Whether an utterance is going on.
        self.speaking = False
        self._recent: deque[_Frame] = deque(maxlen=self._start_frames)  # while silent: the run that may start one
        self._run = 0  # silent: consecutive voiced frames; speaking: consecutive unvoiced frames
        self._start = self._last_voiced = 0  # the utterance's first frame and its last voiced frame
        self._voiced_sum = self._voiced_n = self._clipped = self._n = 0.0
        self._window_sum, self._window_n, self._muted = 0.0, 0, False

    # Feeding -------------------------------------------------------------------------------------------
    def feed(self, pcm: bytes, sample_rate: int, channels: int) -> list[Heard]:
        """Hear one frame of the client's audio (16-bit little-endian PCM, interleaved channels); returns what
        was heard in it, in order. Raises ``ValueError`` (one line) for audio it cannot read."""
        if not 8_000 <= sample_rate <= 384_000:
            raise ValueError(f"audio sample_rate must be 8000..384000 Hz, got {sample_rate}")
        if not 1 <= channels <= 8:
            raise ValueError(f"audio num_channels must be 1..8, got {channels}")
        if len(pcm) % (2 * channels):
            raise ValueError(f"audio is {len(pcm)} bytes, not whole 16-bit samples of {channels} channel(s)")
        self._bytes_per_s = 2.0 * sample_rate * channels
        samples = np.frombuffer(pcm, "<i2")
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1)
        if sample_rate != VAD_RATE_HZ:
            if self._resampler is None or self._resampler.rate != sample_rate:
                self._resampler = _Resampler(sample_rate)
            samples = self._resampler.feed(samples)
        if samples.dtype != np.int16:
            samples = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
        pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        heard: list[Heard] = []
        n = self._frame_len
        whole = len(pending) - len(pending) % n
        for i in range(0, whole, n):
            self._hear(pending[i:i + n], heard)
        self._pending = pending[whole:].copy()
        return heard

    def _hear(self, frame: np.ndarray, heard: list[Heard]) -> None:
        wide = frame.astype(np.float64)
        sum_squares = float(np.dot(wide, wide))
        clipped = int(np.count_nonzero(np.abs(wide) >= CLIPPED_AT))
        # The VAD hears every frame, quiet ones too: it adapts to the noise it hears (fed only loud frames, it
        # takes the voice for the noise and stops hearing it).
        voiced = self._vad.is_speech(frame.tobytes(), VAD_RATE_HZ) and sum_squares >= self._floor
        this = _Frame(voiced, sum_squares, clipped)
        index = self.frames
        self.frames += 1
        if self.speaking:
            self._add(this)
            if voiced:
                self._run, self._last_voiced = 0, index
            else:
                self._run += 1
            length = index + 1 - self._start
            if self._run >= self.hangover_frames or length >= self._max_frames:
                cut = self._run < self.hangover_frames
                edge = self.frames if cut else self._last_voiced + 1
                heard.append(self._report("ended", edge * self.frame_s))
                self.speaking, self._run = False, 0
                self._recent.clear()
                self._window_sum, self._window_n = 0.0, 0
            elif self._report_frames is not None and length % self._report_frames == 0:
                heard.append(self._report("speaking", self.frames * self.frame_s))
            return
        self._recent.append(this)
        self._run = self._run + 1 if voiced else 0
        if self._run >= self._start_frames:
            self.speaking, self._run, self._muted = True, 0, False
            self._start = self._last_voiced = index + 1 - self._start_frames
            self._voiced_sum = self._voiced_n = self._clipped = self._n = 0.0
            for f in self._recent:
                self._add(f)
            heard.append(self._report("started", self._start * self.frame_s))
            return
        if self._report_frames is None:
            return
        self._window_sum += sum_squares
        self._window_n += 1
        if self._window_n >= self._report_frames:
            level = level_dbfs(self._window_sum, self._window_n * self._frame_len)
            if level < MUTED_DBFS and not self._muted:
                self._muted = True
                at = self.frames * self.frame_s
                heard.append(Heard("muted", at, at, 0, 0.0, level, 0.0))
            self._window_sum, self._window_n = 0.0, 0

    def _add(self, frame: _Frame) -> None:
        self._n += self._frame_len
        self._clipped += frame.clipped
        if frame.voiced:
            self._voiced_sum += frame.sum_squares
            self._voiced_n += self._frame_len

    def _report(self, kind: str, edge_s: float) -> Heard:
        at = self.frames * self.frame_s
        level = level_dbfs(self._voiced_sum, int(self._voiced_n))
        share = self._clipped / self._n if self._n else 0.0
        audio_bytes = round((at - self._start * self.frame_s) * self._bytes_per_s)
        return Heard(kind, at, edge_s, audio_bytes, audio_quality(level, share), level, share)
