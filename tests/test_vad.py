"""The microphone's detector (pipesim/live/vad.py) on synthetic voices: where utterances start and end, and the
quality of the audio (a clean voice, a muted microphone, a clipping one, a voice too quiet to hear)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voice_signals import RATE, recording

from pipesim.live.vad import HANGOVER_MS, START_MS, Detector, Heard, audio_quality
from pipesim.scenario import Scenario

POOR = Scenario().quality.poor_threshold


def client_format(samples: np.ndarray, rate: int, channels: int) -> bytes:
    """``samples`` (mono, :data:`RATE`) as a client would send them: at ``rate``, ``channels`` interleaved."""
    if rate != RATE:
        from scipy.signal import resample_poly

        g = math.gcd(rate, RATE)
        samples = np.clip(np.rint(resample_poly(samples.astype(float), rate // g, RATE // g)), -32768, 32767)
    return np.repeat(samples.astype("<i2"), channels).tobytes()


def feed_in_pieces(detector: Detector, pcm: bytes, rate: int, channels: int, sizes: list[int]) -> list[Heard]:
    """Feed ``pcm`` as frames of the given sizes (in sample frames, cycled), as a client streams it (a browser
    records 128 samples at a time)."""
    heard: list[Heard] = []
    step, pos, i = 2 * channels, 0, 0
    while pos < len(pcm):
        n = sizes[i % len(sizes)] * step
        heard += detector.feed(pcm[pos:pos + n], rate, channels)
        pos, i = pos + n, i + 1
    return heard


#: An utterance: syllables of 120..350 ms with pauses of 20..150 ms between them (shorter than the hangover).
utterances = st.lists(st.tuples(st.floats(0.12, 0.35), st.floats(0.02, 0.15)), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), speech=st.lists(utterances, min_size=1, max_size=3),
       silences=st.lists(st.floats(HANGOVER_MS / 1000 + 0.25, 2.0), min_size=4, max_size=4),
       level=st.floats(-35.0, -12.0), noise=st.one_of(st.none(), st.floats(-90.0, -65.0)),
       rate=st.sampled_from([16_000, 48_000, 44_100, 8_000]), channels=st.sampled_from([1, 2]),
       sizes=st.lists(st.integers(80, 4096), min_size=1, max_size=5))
def test_the_detector_finds_each_utterance_and_ends_it_one_hangover_after_the_voice_stops(
        seed: int, speech: list[list[tuple[float, float]]], silences: list[float], level: float,
        noise: float | None, rate: int, channels: int, sizes: list[int]) -> None:
    parts: list[tuple[str, list[float]]] = [("silence", [silences[0]])]
    for k, syllables in enumerate(speech):
        lengths = [x for syllable, pause in syllables for x in (pause, syllable)][1:]  # no pause before the first
        parts += [("speech", lengths), ("silence", [silences[k + 1]])]
    rec = recording(np.random.default_rng(seed), parts, level_dbfs=level, noise_dbfs=noise)
    detector = Detector(report_every_s=None)
    heard = feed_in_pieces(detector, client_format(rec.samples, rate, channels), rate, channels, sizes)

    assert [h.kind for h in heard] == ["started", "ended"] * len(rec.utterances), (heard, rec.utterances)
    frame, hangover, start = detector.frame_s, HANGOVER_MS / 1000, START_MS / 1000
    slack = frame + 0.01  # a frame, as the voice's edges fall inside one; resampling blurs them a little
    for (began, ended), on, off in zip(rec.utterances, heard[::2], heard[1::2], strict=True):
        assert began - slack <= on.edge_s <= began + slack
        assert began + start - slack <= on.at_s <= began + start + slack
        assert ended - slack <= off.edge_s <= ended + slack
        assert ended + hangover - slack <= off.at_s <= ended + hangover + slack  # "within the hangover"
        assert off.quality >= 0.8, off  # a clean voice at a speaking level


def test_running_reports_follow_the_utterance_with_its_bytes_as_the_client_sent_them() -> None:
    rec = recording(np.random.default_rng(1), [("silence", [1.0]), ("speech", [0.4, 0.1, 0.5]),
                                               ("silence", [1.0])], noise_dbfs=-70.0)
    detector = Detector(report_every_s=0.24)
    heard = detector.feed(client_format(rec.samples, 48_000, 2), 48_000, 2)
    kinds = [h.kind for h in heard]
    assert kinds[0] == "started" and kinds[-1] == "ended" and set(kinds[1:-1]) == {"speaking"}
    assert len(kinds) - 2 == int((heard[-1].at_s - heard[0].edge_s) / 0.24 + 1e-9)
    assert all(b.at_s - a.at_s == pytest.approx(0.24) for a, b in zip(heard[1:-2], heard[2:-1], strict=True))
    per_second = 48_000 * 2 * 2  # 16-bit stereo at 48 kHz
    for h in heard:
        assert h.audio_bytes == round((h.at_s - heard[0].edge_s) * per_second)
    assert [h.audio_bytes for h in heard] == sorted(h.audio_bytes for h in heard)


def test_a_muted_microphone_is_reported_once_as_quality_zero_and_never_speaks() -> None:
    detector = Detector(report_every_s=0.25)
    heard = detector.feed(bytes(2 * RATE * 3), RATE, 1)  # 3 s of digital silence
    assert [(h.kind, h.quality, h.audio_bytes) for h in heard] == [("muted", 0.0, 0)]
    assert heard[0].level_dbfs == -math.inf and heard[0].quality < POOR
    # A voice afterwards is an utterance again; silence after it is muted again (once).
    rec = recording(np.random.default_rng(2), [("speech", [0.5]), ("silence", [2.0])])
    kinds = [h.kind for h in detector.feed(rec.samples.tobytes(), RATE, 1) if h.kind != "speaking"]
    assert kinds == ["started", "ended", "muted"]


def test_a_quiet_room_is_not_muted_and_not_speech() -> None:
    rec = recording(np.random.default_rng(3), [("silence", [3.0])], noise_dbfs=-65.0)
    assert Detector(report_every_s=0.25).feed(rec.samples.tobytes(), RATE, 1) == []


@pytest.mark.parametrize(("gain_db", "poor"), [(0.0, False), (30.0, True), (-28.0, True)],
                         ids=["clean", "clipping", "too-quiet"])
def test_the_quality_comes_from_the_level_and_the_clipping_of_the_voice(gain_db: float, poor: bool) -> None:
    rec = recording(np.random.default_rng(4), [("silence", [0.5]), ("speech", [0.6, 0.1, 0.6]),
                                               ("silence", [0.6])], level_dbfs=-20.0 + gain_db)
    heard = Detector(report_every_s=None).feed(rec.samples.tobytes(), RATE, 1)
    assert [h.kind for h in heard] == ["started", "ended"]
    end = heard[-1]
    assert (end.quality < POOR) is poor, end
    if gain_db > 0:
        assert end.clipped_share > 0.1 and end.quality == 0.0
    else:
        assert end.clipped_share == 0.0 and end.level_dbfs == pytest.approx(-20.0 + gain_db, abs=1.0)


@given(level=st.floats(-200.0, 0.0), share=st.floats(0.0, 1.0))
def test_the_quality_is_a_score_that_falls_with_quiet_and_with_clipping(level: float, share: float) -> None:
    q = audio_quality(level, share)
    assert 0.0 <= q <= 1.0
    assert audio_quality(level - 3.0, share) <= q and audio_quality(level, min(1.0, share + 0.005)) <= q


@pytest.mark.parametrize(("pcm", "rate", "channels", "problem"), [
    (b"\x00\x00", 0, 1, "audio sample_rate must be 8000..384000 Hz, got 0"),
    (b"\x00\x00", 16_000, 0, "audio num_channels must be 1..8, got 0"),
    (b"\x00\x00\x00", 16_000, 1, "audio is 3 bytes, not whole 16-bit samples of 1 channel(s)"),
    (b"\x00\x00", 16_000, 2, "audio is 2 bytes, not whole 16-bit samples of 2 channel(s)"),
])
def test_audio_it_cannot_read_is_one_line(pcm: bytes, rate: int, channels: int, problem: str) -> None:
    detector = Detector()
    with pytest.raises(ValueError) as err:
        detector.feed(pcm, rate, channels)
    assert str(err.value) == problem
    assert detector.feed(bytes(640), 16_000, 1) == [] and detector.frames == 0  # and it goes on hearing
