"""Synthetic voices for the microphone tests: speech-like utterances (voiced syllables and short pauses) and
silences, as 16-bit PCM with the truth (where each utterance starts and ends), and WAV files of them; and a
scenario whose bot answers quickly (:func:`quick_bot`).

A syllable is a harmonic voice (a fundamental of 100..220 Hz with a slow vibrato, harmonics up to 3.4 kHz
falling as 1/k) under a flat envelope with 10 ms ramps: WebRTC's VAD calls it speech, as it calls a voice.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipesim.scenario import Scenario

RATE = 16_000


def syllable(rng: np.random.Generator, seconds: float, level_dbfs: float, rate: int = RATE) -> np.ndarray:
    """One voiced syllable, float samples at ``level_dbfs`` RMS (full scale 32768)."""
    n = max(1, round(seconds * rate))
    t = np.arange(n) / rate
    f0 = rng.uniform(100.0, 220.0) * (1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, int(3400 / 220) + 1))
    ramp = min(n // 2, round(0.01 * rate))
    envelope = np.ones(n)
    if ramp:
        envelope[:ramp] = envelope[-ramp:][::-1] = np.linspace(0.0, 1.0, ramp)
    voice = voice * envelope
    rms = float(np.sqrt(np.mean(voice ** 2))) or 1.0
    return voice / rms * 32768.0 * 10.0 ** (level_dbfs / 20.0)


@dataclass
class Recording:
    """Samples (int16, mono, :data:`RATE`) and the true ``(start_s, end_s)`` of each utterance in them."""

    samples: np.ndarray
    utterances: list[tuple[float, float]] = field(default_factory=list)

    def wav(self, rate: int = RATE) -> bytes:
        """The samples as a 16-bit mono WAV file (resampled to ``rate``)."""
        samples = self.samples
        if rate != RATE:
            from scipy.signal import resample_poly

            samples = np.clip(np.rint(resample_poly(samples.astype(float), rate, RATE)), -32768, 32767).astype("<i2")
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())
        return out.getvalue()


def recording(rng: np.random.Generator, parts: list[tuple[str, list[float]]], level_dbfs: float = -20.0,
              noise_dbfs: float | None = None) -> Recording:
    """``parts``: ``("silence", [seconds])`` or ``("speech", [syllable, pause, syllable, ...])`` in seconds;
    silences hold Gaussian noise at ``noise_dbfs`` (None: digital zeros)."""
    chunks: list[np.ndarray] = []
    utterances: list[tuple[float, float]] = []
    at = 0.0

    def quiet(seconds: float) -> np.ndarray:
        n = round(seconds * RATE)
        if noise_dbfs is None:
            return np.zeros(n)
        return rng.standard_normal(n) * 32768.0 * 10.0 ** (noise_dbfs / 20.0)

    for kind, lengths in parts:
        if kind == "silence":
            chunks.append(quiet(lengths[0]))
            at += len(chunks[-1]) / RATE
            continue
        start = at
        for i, seconds in enumerate(lengths):
            chunks.append(syllable(rng, seconds, level_dbfs) if i % 2 == 0 else quiet(seconds))
            at += len(chunks[-1]) / RATE
        utterances.append((start, at))
    samples = np.clip(np.rint(np.concatenate(chunks)), -32768, 32767).astype("<i2")
    return Recording(samples, utterances)


def quick_bot(**sessions: Any) -> Scenario:
    """A scenario whose bot answers within a second (no background sessions, no drawn barge-ins): a turn is
    over before the next utterance of a recording begins."""
    return Scenario.model_validate({
        "name": "microphone", "seed": 3,
        "sessions": {"arrivals": {"kind": "at_once", "count": 0}, "end_of_utterance_delay_s": 0.1,
                     "barge_in_probability": 0.0, **sessions},
        "kafka": {"latency_s": 0.002},
        "services": {"stt": {"latency_s": 0.1}, "llm": {"ttft_s": 0.1, "per_token_s": 0.005, "tokens": 6},
                     "tts": {"ttfb_s": 0.1, "audio_s_per_token": 0.05}}})
