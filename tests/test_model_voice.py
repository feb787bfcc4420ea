"""The model's seam for a real voice (``add_session(voice=True)``, ``voice_started``/``voice_audio``/``voice_ended``):
the utterance begins and ends when the live side says, with the audio it heard; the rest of the turn is the model's.
(Offline runs are unchanged: tests/test_trace.py's digests and tests/test_queueing_theory.py.)"""

from __future__ import annotations

import math

import pytest
from test_model import scripted

from pipesim.model import Simulation
from pipesim.state import IllegalTransition


def voice_model() -> Simulation:
    sim = Simulation(scripted(), live=True)
    sim.add_session("mic", voice=True)
    return sim


def until(sim: Simulation, t: float) -> None:
    sim.env.run(until=t)


def events(sim: Simulation, session: str = "mic") -> list[tuple[float, str]]:
    frame = sim.trace.events_frame()
    frame = frame[frame["session_id"] == session]
    return [(round(t, 6), e) for t, e in zip(frame["t"], frame["event"], strict=True)]


def test_a_voice_speaks_only_when_told_and_its_utterance_is_what_was_heard() -> None:
    sim = voice_model()
    until(sim, 30.0)  # the scenario's user would have spoken long ago: a voice has no schedule of its own
    assert [e for _, e in events(sim)] == ["session_created", "session_started"]

    sim.voice_started("mic")
    until(sim, 30.5)
    sim.voice_audio("mic", 16_000, 0.8)  # a running report: the dashboard's buffer and quality
    until(sim, 31.2)
    sim.voice_ended("mic", 38_400, 0.75)
    until(sim, 60.0)
    turn = sim.trace.turns_frame().iloc[0]
    assert (turn["speech_start"], turn["speech_end"]) == (30.0, 31.2)
    assert turn["utterance_duration"] == pytest.approx(1.2)
    assert (turn["audio_bytes"], turn["audio_quality"], turn["outcome"]) == (38_400, 0.75, "complete")
    assert turn["end_of_utterance_delay"] == pytest.approx(0.3)  # the rest of the turn is the model's
    audio = sim.trace.events_frame().query("event == 'audio'")
    assert audio["t"].tolist() == [30.5, 31.2] and audio["audio_quality"].tolist() == [0.8, 0.75]
    assert audio["buffer_size"].tolist() == [16_000, 38_400]
    # And the voice speaks again when it does, not before.
    assert sim.manager.snapshot("mic", sim.env.now).state == "complete"
    sim.voice_started("mic")
    until(sim, 61.0)
    sim.voice_ended("mic", 32_000, 0.9)
    until(sim, 90.0)
    assert sim.trace.turns_frame()["speech_start"].tolist() == [30.0, 60.0]


def test_a_voice_over_the_speaking_bot_is_a_barge_in_and_over_a_preparing_bot_is_not_heard() -> None:
    sim = voice_model()
    sim.voice_started("mic")
    until(sim, 1.0)
    sim.voice_ended("mic", 32_000, 0.9)
    until(sim, 1.5)  # end of utterance at 1.3, STT from 1.3: the bot prepares its reply
    with pytest.raises(IllegalTransition, match="preparing its reply"):
        sim.voice_started("mic")
    sim.voice_audio("mic", 100, 0.5)  # ignored: the state manager takes no audio while a turn is in flight
    sim.voice_ended("mic", 100, 0.5)  # nothing: no utterance was heard starting
    assert sim.trace.n_turns == 0 and sim.manager.snapshot("mic", sim.env.now).buffer_size == 0
    while sim.manager.snapshot("mic", sim.env.now).tts != "executing":
        sim.env.step()
    sim.voice_started("mic")
    until(sim, sim.env.now + 0.001)
    assert [e for _, e in events(sim)][-3:] == ["barge_in", "turn_ended", "speech_started"]
    assert sim.trace.turns_frame()["outcome"].tolist() == ["barge_in"]
    with pytest.raises(IllegalTransition, match="the voice is speaking"):
        sim.voice_started("mic")


def test_a_pause_cuts_the_voice_and_a_resume_gives_it_no_schedule() -> None:
    sim = voice_model()
    sim.voice_started("mic")
    until(sim, 1.0)
    sim.control("mic", "pause")
    sim.voice_ended("mic", 32_000, 0.9)  # too late: the pause cut it
    sim.control("mic", "start")
    until(sim, 60.0)
    assert sim.trace.n_turns == 0
    assert [e for _, e in events(sim)][-3:] == ["speech_started", "session_paused", "session_resumed"]


def test_a_voice_session_takes_no_drawn_speech_and_a_drawn_session_no_voice() -> None:
    sim = voice_model()
    with pytest.raises(IllegalTransition, match="real voice"):
        sim.speak_now("mic")
    sim.control("drawn", "start")
    with pytest.raises(ValueError, match="has no real voice"):
        sim.voice_started("drawn")


def test_a_silent_microphone_scores_zero_and_the_turn_carries_it() -> None:
    sim = voice_model()
    sim.voice_audio("mic", 0, 0.0)  # listening, nobody speaks: a muted microphone shows
    snap = sim.manager.snapshot("mic", sim.env.now)
    assert (snap.audio_quality, snap.buffer_size) == (0.0, 0)
    sim.voice_started("mic")
    until(sim, 2.0)
    sim.voice_ended("mic", 64_000, 0.0)
    until(sim, 2.1)
    assert sim.trace.events_frame().query("event == 'speech_ended'")["value"].tolist() == [2.0]
    sim.voice_audio("mic", 0, 0.0)  # silence after the utterance: its audio stays buffered for STT
    assert sim.manager.snapshot("mic", sim.env.now).buffer_size == 64_000
    until(sim, 60.0)
    turn = sim.trace.turns_frame().iloc[0]
    assert turn["audio_quality"] == 0.0 < sim.scenario.quality.poor_threshold
    assert not math.isnan(turn["turn_end"])
