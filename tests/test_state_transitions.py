"""Table-driven tests of every legal transition in :mod:`pipesim.state.rules`, and of the illegal ones.

Every test brings a session into the state it needs through the manager's public methods
(:func:`session_in`), then checks the returned :class:`Transition`, what the observers received and,
for a refused event, that :class:`IllegalTransition` names the right parts and nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipesim.state import IllegalTransition, PipelineStateManager, Transition, UnknownSession
from pipesim.state.rules import LIFECYCLE, PIPELINE, PREREQUISITES, SERVICE, SERVICES

IDLE_ALL = {"stt": "idle", "llm": "idle", "tts": "idle"}
DONE_ALL = {"stt": "complete", "llm": "complete", "tts": "complete"}
BUFFER = 3200
QUALITY = 0.75
T = 10.0  # time of the event under test (the set-up uses earlier times)


# Helpers ------------------------------------------------------------------------------------------
class Recorder:
    """An observer that keeps every transition it is handed."""

    def __init__(self) -> None:
        self.seen: list[Transition] = []

    def __call__(self, tr: Transition) -> None:
        self.seen.append(tr)

    def events(self) -> list[str]:
        return [tr.event for tr in self.seen]


@pytest.fixture
def m() -> PipelineStateManager:
    return PipelineStateManager()


@pytest.fixture
def rec(m: PipelineStateManager) -> Recorder:
    r = Recorder()
    m.subscribe(r)
    return r


def _drive(m: PipelineStateManager, sid: str, service: str, target: str, t: float) -> None:
    """Walk ``service`` through idle -> waiting -> executing -> complete until it reaches ``target``."""
    steps = [m.service_requested, m.service_started, m.service_completed]
    for step in steps[:["idle", "waiting", "executing", "complete"].index(target)]:
        step(sid, service, t)


def session_in(m: PipelineStateManager, sid: str = "s1", *, lifecycle: str = "active",
               pipeline: str = "listening", services: dict[str, str] | None = None,
               buffer_size: int = BUFFER, turns: int = 0) -> Transition:
    """Create ``sid`` and bring it, with public calls only, into the given lifecycle/pipeline/services.

    ``turns`` complete turns are played first (so ``turn_id`` can be non-zero). A session in
    ``processing`` has had audio of ``buffer_size`` bytes; services are driven in the order STT, LLM,
    TTS, which reaches every combination the coordinator allows. Returns the final snapshot.
    """
    services = {**IDLE_ALL, **(services or {})}
    m.create_session(sid, 0.0)
    if lifecycle == "created":
        assert pipeline == "listening" and services == IDLE_ALL
        return m.snapshot(sid, 1.0)
    m.start(sid, 0.1)
    for _ in range(turns):
        m.speech_started(sid, 0.2)
        m.utterance_ended(sid, 0.3)
        for name in SERVICES:
            _drive(m, sid, name, "complete", 0.4)
    if pipeline == "listening" and turns:
        m.speech_started(sid, 0.5)
    if pipeline in ("processing", "complete"):
        if m.snapshot(sid, 0.5).state == "complete":
            m.speech_started(sid, 0.5)
        m.audio(sid, 0.6, buffer_size, QUALITY)
        m.utterance_ended(sid, 0.7)
        if pipeline == "complete":
            services = dict(DONE_ALL)
        for name in SERVICES:
            _drive(m, sid, name, services[name], 0.8)
    else:
        assert services == IDLE_ALL, "a listening session has idle services"
    if lifecycle == "paused":
        m.pause(sid, 0.9)
    elif lifecycle == "stopped":
        m.stop(sid, 0.9)
    snap = m.snapshot(sid, 1.0)
    assert snap.status == lifecycle
    if lifecycle == "active":
        assert (snap.state, snap.services) == (pipeline, services)
    return snap


def given(m: PipelineStateManager, rec: Recorder, sid: str = "s1", **state: object) -> Transition:
    """:func:`session_in`, then forget what the observer saw during the set-up."""
    before = session_in(m, sid, **state)  # type: ignore[arg-type]
    rec.seen.clear()
    return before


def check(m: PipelineStateManager, rec: Recorder, tr: Transition, before: Transition, *, event: str,
          state: str, services: dict[str, str], status: str = "active", turn_id: int | None = None,
          buffer_size: int | None = None, audio_quality: float | None = None, service: str | None = None,
          error: str | None = None, emitted: int = 1) -> None:
    """The returned transition, what the observer got, and the snapshot after it, all agree."""
    assert (tr.event, tr.state, tr.services, tr.status) == (event, state, services, status)
    assert (tr.service, tr.error, tr.session_id, tr.t) == (service, error, before.session_id, T)
    assert tr.turn_id == (before.turn_id if turn_id is None else turn_id)
    assert tr.buffer_size == (before.buffer_size if buffer_size is None else buffer_size)
    assert tr.audio_quality == (before.audio_quality if audio_quality is None else audio_quality)
    assert len(rec.seen) == emitted and rec.seen[-1] == tr
    assert [x.seq for x in rec.seen] == list(range(before.seq + 1, before.seq + 1 + emitted))
    assert all(x.session_id == before.session_id for x in rec.seen)
    assert m.snapshot(before.session_id, T) == tr._replace(event="snapshot", service=None,
                                                       error=None)


Act = Callable[[PipelineStateManager, str], object]


def refused(m: PipelineStateManager, rec: Recorder, sid: str, act: Act,
            exc: type[Exception] = IllegalTransition) -> Exception:
    """Run ``act``, which must raise ``exc`` and leave the session and the observers untouched."""
    before = m.snapshot(sid, T) if sid in m else None
    seen = len(rec.seen)
    with pytest.raises(exc) as info:
        act(m, sid)
    if before is not None:
        assert m.snapshot(sid, T) == before
    assert len(rec.seen) == seen
    return info.value


def assert_illegal(err: Exception, sid: str, part: str, current: str, requested: str) -> None:
    assert isinstance(err, IllegalTransition)
    assert (err.session_id, err.part, err.current, err.requested) == (sid, part, current, requested)
    assert err.service == (part if part in SERVICES else None)
    assert f"{sid!r}" in str(err) and f"{current!r}" in str(err) and f"{requested!r}" in str(err)


#: The services each service needs around it to take every step of its own table.
CONTEXT = {"stt": {}, "llm": {"stt": "complete"}, "tts": {"stt": "complete", "llm": "complete"}}


# Creation -----------------------------------------------------------------------------------------
def test_create_session(m, rec):
    tr = m.create_session("s1", T)
    assert (tr.event, tr.status, tr.state, tr.services) == ("session_created", "created", "listening",
                                                            IDLE_ALL)
    assert (tr.seq, tr.turn_id, tr.buffer_size, tr.audio_quality) == (0, 0, 0, 0.0)
    assert (tr.service, tr.error) == (None, None)
    assert rec.seen == [tr]
    assert "s1" in m and m.session_ids == ["s1"] and m.status("s1") == "created"
    assert m.snapshot("s1", T) == tr._replace(seq=0, event="snapshot")


def test_session_in_helper_reaches_the_requested_states(m):
    snap = session_in(m, "a", pipeline="processing", services={"stt": "complete", "llm": "executing",
                                                               "tts": "waiting"}, turns=2)
    assert (snap.state, snap.turn_id, snap.buffer_size) == ("processing", 3, 0)
    assert snap.services == {"stt": "complete", "llm": "executing", "tts": "waiting"}
    assert session_in(m, "b", lifecycle="paused").status == "paused"
    assert session_in(m, "c", pipeline="complete").services == DONE_ALL


# Lifecycle table ----------------------------------------------------------------------------------
LIFECYCLE_CASES = [
    ("created", "start", "active", "session_started"),
    ("created", "stop", "stopped", "session_stopped"),
    ("active", "pause", "paused", "session_paused"),
    ("active", "stop", "stopped", "session_stopped"),
    ("paused", "start", "active", "session_resumed"),
    ("paused", "stop", "stopped", "session_stopped"),
]


def test_lifecycle_cases_cover_the_table():
    table = {(src, ev, dst) for src, row in LIFECYCLE.items() for ev, dst in row.items()}
    assert {case[:3] for case in LIFECYCLE_CASES} == table
    assert LIFECYCLE["stopped"] == {}


@pytest.mark.parametrize(("src", "event", "dst", "emitted"), LIFECYCLE_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in LIFECYCLE_CASES])
def test_lifecycle_transition(m, rec, src, event, dst, emitted):
    before = given(m, rec, lifecycle=src)
    tr = getattr(m, event)("s1", T)
    state = "complete" if dst == "stopped" else "listening"
    check(m, rec, tr, before, event=emitted, status=dst, state=state, services=IDLE_ALL, buffer_size=0)
    assert m.status("s1") == dst


@pytest.mark.parametrize(("src", "event", "dst", "emitted"), LIFECYCLE_CASES,
                         ids=[f"control-{c[0]}-{c[1]}" for c in LIFECYCLE_CASES])
def test_control_applies_the_lifecycle_table(m, rec, src, event, dst, emitted):
    before = given(m, rec, lifecycle=src)
    tr = m.control("s1", event, T)
    state = "complete" if dst == "stopped" else "listening"
    check(m, rec, tr, before, event=emitted, status=dst, state=state, services=IDLE_ALL, buffer_size=0)


# Pipeline table -----------------------------------------------------------------------------------
TTS_SPEAKING = {"stt": "complete", "llm": "complete", "tts": "executing"}

PIPELINE_CASES = [
    pytest.param("listening", "speech_started", "listening", {}, lambda m: m.speech_started("s1", T),
                 {"event": "speech_started", "services": IDLE_ALL}, id="listening-speech_started"),
    pytest.param("listening", "audio", "listening", {}, lambda m: m.audio("s1", T, 4096, 0.5),
                 {"event": "audio", "services": IDLE_ALL, "buffer_size": 4096, "audio_quality": 0.5},
                 id="listening-audio"),
    pytest.param("listening", "utterance_ended", "processing", {"turns": 1},
                 lambda m: m.utterance_ended("s1", T),
                 {"event": "utterance_ended", "services": IDLE_ALL, "turn_id": 2},
                 id="listening-utterance_ended"),
    pytest.param("processing", "turn_completed", "complete", {"services": TTS_SPEAKING},
                 lambda m: m.service_completed("s1", "tts", T),
                 {"event": "service_completed", "service": "tts", "services": DONE_ALL},
                 id="processing-turn_completed"),
    pytest.param("processing", "barge_in", "listening", {"services": TTS_SPEAKING},
                 lambda m: m.barge_in("s1", T), {"event": "barge_in", "services": IDLE_ALL},
                 id="processing-barge_in"),
    pytest.param("processing", "turn_failed", "listening", {"services": {"stt": "executing"}},
                 lambda m: m.turn_failed("s1", T, "no answer"),
                 {"event": "turn_failed", "services": IDLE_ALL, "error": "no answer"},
                 id="processing-turn_failed"),
    pytest.param("complete", "speech_started", "listening", {}, lambda m: m.speech_started("s1", T),
                 {"event": "speech_started", "services": IDLE_ALL}, id="complete-speech_started"),
]


def test_pipeline_cases_cover_the_table():
    table = {(src, ev, dst) for src, row in PIPELINE.items() for ev, dst in row.items()}
    assert {tuple(case.values[:3]) for case in PIPELINE_CASES} == table


@pytest.mark.parametrize(("src", "event", "dst", "setup", "act", "expect"), PIPELINE_CASES)
def test_pipeline_transition(m, rec, src, event, dst, setup, act, expect):
    before = given(m, rec, pipeline=src, **setup)
    assert before.state == src
    check(m, rec, act(m), before, state=dst, **expect)


# Service table ------------------------------------------------------------------------------------
SERVICE_ROWS = [
    ("idle", "service_requested", "waiting"),
    ("waiting", "service_started", "executing"),
    ("waiting", "kafka_timeout", "waiting"),
    ("executing", "service_completed", "complete"),
    ("executing", "kafka_timeout", "waiting"),
]


def test_service_rows_cover_the_table():
    table = {(src, ev, dst) for src, row in SERVICE.items() for ev, dst in row.items()}
    assert set(SERVICE_ROWS) == table
    assert SERVICE["complete"] == {}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(("src", "event", "dst"), SERVICE_ROWS, ids=[f"{r[0]}-{r[1]}" for r in SERVICE_ROWS])
def test_service_transition(m, rec, service, src, event, dst):
    services = {**IDLE_ALL, **CONTEXT[service], service: src}
    before = given(m, rec, pipeline="processing", services=services)
    tr = getattr(m, event)("s1", service, T)
    turn_done = service == "tts" and dst == "complete"
    stt_took_audio = service == "stt" and event == "service_requested"
    check(m, rec, tr, before, event=event, service=service, services={**services, service: dst},
          state="complete" if turn_done else "processing", buffer_size=0 if stt_took_audio else None)
    if service == "stt" and src == "idle":
        assert before.buffer_size == BUFFER


# Service coordinator ------------------------------------------------------------------------------
PREREQ_LEGAL = [
    ("llm", "kafka_timeout", "tts", "idle", {"stt": "complete", "llm": "executing"}),
    ("llm", "service_requested", "stt", "complete", {"stt": "complete"}),
    ("tts", "service_requested", "llm", "executing", {"stt": "complete", "llm": "executing"}),
    ("tts", "service_requested", "llm", "complete", {"stt": "complete", "llm": "complete"}),
    ("tts", "service_completed", "llm", "complete", TTS_SPEAKING),
]


def test_prerequisite_cases_cover_the_coordinator():
    table = {(svc, ev, other, ok) for (svc, ev), (other, allowed) in PREREQUISITES.items() for ok in allowed}
    assert {case[:4] for case in PREREQ_LEGAL} == table


@pytest.mark.parametrize(("service", "event", "other", "other_state", "services"), PREREQ_LEGAL,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in PREREQ_LEGAL])
def test_prerequisite_met(m, rec, service, event, other, other_state, services):
    services = {**IDLE_ALL, **services}
    before = given(m, rec, pipeline="processing", services=services)
    assert before.services[other] == other_state
    tr = getattr(m, event)("s1", service, T)
    dst = SERVICE[services[service]][event]
    check(m, rec, tr, before, event=event, service=service, services={**services, service: dst},
          state="complete" if (service, dst) == ("tts", "complete") else "processing",
          buffer_size=0 if service == "stt" else None)
    assert tr.services[other] == other_state


PREREQ_ILLEGAL = [
    pytest.param("llm", "service_requested", {"stt": "idle"}, "idle", "waiting",
                 id="llm-before-stt-requested"),
    pytest.param("llm", "service_requested", {"stt": "waiting"}, "idle", "waiting",
                 id="llm-while-stt-waiting"),
    pytest.param("llm", "service_requested", {"stt": "executing"}, "idle", "waiting",
                 id="llm-while-stt-executing"),
    pytest.param("tts", "service_requested", {"stt": "complete"}, "idle", "waiting", id="tts-while-llm-idle"),
    pytest.param("tts", "service_requested", {"stt": "complete", "llm": "waiting"}, "idle", "waiting",
                 id="tts-while-llm-waiting"),
    pytest.param("tts", "service_completed", {"stt": "complete", "llm": "executing", "tts": "executing"},
                 "executing", "complete", id="tts-completed-before-llm"),
]


@pytest.mark.parametrize(("service", "event", "services", "current", "requested"), PREREQ_ILLEGAL)
def test_prerequisite_not_met(m, rec, service, event, services, current, requested):
    given(m, rec, pipeline="processing", services=services)
    err = refused(m, rec, "s1", lambda m, sid: getattr(m, event)(sid, service, T))
    assert_illegal(err, "s1", service, current, requested)
    other, allowed = PREREQUISITES[(service, event)]
    assert f"{other} is {services.get(other, 'idle')!r}" in str(err)
    assert all(state in str(err) for state in allowed)


def test_a_second_stt_request_is_refused_by_its_own_table(m, rec):
    """LLM leaves idle only once STT is complete, so STT's own table orders a second STT request."""
    given(m, rec, pipeline="processing", services={"stt": "complete", "llm": "waiting"})
    err = refused(m, rec, "s1", lambda m, sid: m.service_requested(sid, "stt", T))
    assert_illegal(err, "s1", "stt", "complete", "waiting")
    assert "llm is" not in str(err)


# Illegal transitions ------------------------------------------------------------------------------
P = "processing"
LISTEN: dict[str, object] = {}
DONE = {"pipeline": "complete"}
PAUSED = {"lifecycle": "paused"}
CREATED = {"lifecycle": "created"}


def proc(**services: str) -> dict[str, object]:
    """Set-up of an active session processing a turn, with these services."""
    return {"pipeline": P, "services": services}


def call(method: str, *args: object) -> Act:
    """``m.method(session_id, *args, T)``: the event under test."""
    return lambda m, sid: getattr(m, method)(sid, *args, T)


def fail(service: str) -> Act:
    return lambda m, sid: m.service_failed(sid, service, T, "x")


def case(setup: dict[str, object], act: Act, part: str, current: str, requested: str, name: str) -> object:
    return pytest.param(setup, act, part, current, requested, id=name)


ILLEGAL = [
    # service events outside an active, processing session
    case(LISTEN, call("service_requested", "stt"), "stt", "idle", "waiting", "stt-listening"),
    case(LISTEN, call("service_started", "llm"), "llm", "idle", "executing", "started-listening"),
    case(LISTEN, call("kafka_timeout", "tts"), "tts", "idle", "waiting", "timeout-listening"),
    case(DONE, call("service_requested", "stt"), "stt", "complete", "waiting", "stt-complete-pipeline"),
    case(DONE, call("kafka_timeout", "tts"), "tts", "complete", "waiting", "timeout-complete-pipeline"),
    case(PAUSED, call("service_requested", "stt"), "lifecycle", "paused", "waiting", "stt-paused"),
    case(PAUSED, call("kafka_timeout", "stt"), "lifecycle", "paused", "waiting", "timeout-paused"),
    case(PAUSED, fail("stt"), "lifecycle", "paused", "idle", "failed-paused"),
    case(CREATED, call("service_started", "stt"), "lifecycle", "created", "executing", "started-created"),
    case(CREATED, call("speech_started"), "lifecycle", "created", "listening", "speech-created"),
    case(PAUSED, call("audio", 10, 0.5), "lifecycle", "paused", "listening", "audio-paused"),
    case(PAUSED, call("utterance_ended"), "lifecycle", "paused", P, "utterance-paused"),
    # the pipeline table
    case(proc(), call("audio", 10, 0.5), "pipeline", P, "listening", "audio-processing"),
    case(proc(stt="executing"), call("audio", 10, 0.5), "pipeline", P, "listening", "audio-stt-executing"),
    case(DONE, call("audio", 10, 0.5), "pipeline", "complete", "listening", "audio-complete"),
    case(proc(), call("speech_started"), "pipeline", P, "listening", "speech-processing"),
    case(proc(), call("utterance_ended"), "pipeline", P, P, "utterance-processing"),
    case(DONE, call("utterance_ended"), "pipeline", "complete", P, "utterance-complete"),
    case(LISTEN, call("barge_in"), "pipeline", "listening", "listening", "barge-listening"),
    case(DONE, call("barge_in"), "pipeline", "complete", "listening", "barge-complete"),
    case(LISTEN, lambda m, s: m.turn_failed(s, T, "x"), "pipeline", "listening", "listening",
         "turn-failed-listening"),
    case(DONE, lambda m, s: m.turn_failed(s, T, "x"), "pipeline", "complete", "listening",
         "turn-failed-complete"),
    # barge-in needs the bot speaking (TTS executing)
    case(proc(stt="executing"), call("barge_in"), "tts", "idle", "listening", "barge-tts-idle"),
    case(proc(stt="complete", llm="executing", tts="waiting"), call("barge_in"), "tts", "waiting",
         "listening", "barge-tts-waiting"),
    # the service table
    case(proc(), call("service_started", "stt"), "stt", "idle", "executing", "started-idle"),
    case(proc(), call("service_completed", "stt"), "stt", "idle", "complete", "completed-idle"),
    case(proc(stt="waiting"), call("service_completed", "stt"), "stt", "waiting", "complete",
         "completed-waiting"),
    case(proc(stt="waiting"), call("service_requested", "stt"), "stt", "waiting", "waiting",
         "requested-twice"),
    case(proc(stt="executing"), call("service_started", "stt"), "stt", "executing", "executing",
         "started-twice"),
    case(proc(stt="complete"), call("service_requested", "stt"), "stt", "complete", "waiting",
         "requested-after-complete"),
    case(proc(stt="complete"), call("service_completed", "stt"), "stt", "complete", "complete",
         "completed-twice"),
    case(proc(), call("kafka_timeout", "stt"), "stt", "idle", "waiting", "timeout-idle"),
    case(proc(stt="complete"), call("kafka_timeout", "stt"), "stt", "complete", "waiting",
         "timeout-complete"),
    case(proc(stt="executing"), fail("llm"), "llm", "idle", "idle", "failed-idle"),
    case(proc(stt="complete"), fail("stt"), "stt", "complete", "idle", "failed-complete"),
    # unknown service names
    case(proc(), call("service_requested", "whisper"), "'whisper'", "unknown", "waiting",
         "unknown-requested"),
    case(proc(), call("service_started", "whisper"), "'whisper'", "unknown", "executing", "unknown-started"),
    case(proc(), call("service_completed", "whisper"), "'whisper'", "unknown", "complete",
         "unknown-completed"),
    case(proc(), call("kafka_timeout", "whisper"), "'whisper'", "unknown", "waiting", "unknown-timeout"),
    case(LISTEN, call("service_requested", "whisper"), "'whisper'", "unknown", "waiting",
         "unknown-listening"),
    # the lifecycle table
    case(LISTEN, call("start"), "lifecycle", "active", "active", "start-active"),
    case(proc(stt="executing"), call("start"), "lifecycle", "active", "active", "start-active-mid-turn"),
    case(PAUSED, call("pause"), "lifecycle", "paused", "paused", "pause-paused"),
    case(CREATED, call("pause"), "lifecycle", "created", "paused", "pause-created"),
    case(LISTEN, call("control", "reboot"), "lifecycle", "active", "reboot", "control-unknown-action"),
    case(LISTEN, lambda m, s: m.forget(s), "lifecycle", "active", "forget", "forget-active"),
    case(PAUSED, lambda m, s: m.forget(s), "lifecycle", "paused", "forget", "forget-paused"),
    case(LISTEN, call("create_session"), "lifecycle", "active", "created", "duplicate-create"),
    case(CREATED, call("create_session"), "lifecycle", "created", "created", "duplicate-create-created"),
]


@pytest.mark.parametrize(("setup", "act", "part", "current", "requested"), ILLEGAL)
def test_illegal_transition(m, rec, setup, act, part, current, requested):
    given(m, rec, **setup)
    err = refused(m, rec, "s1", act)
    assert_illegal(err, "s1", part, current, requested)


#: Every event method, with the state it would request: a stopped session refuses them all.
EVERY_EVENT = [
    ("start", lambda m, s: m.start(s, T), "active"),
    ("pause", lambda m, s: m.pause(s, T), "paused"),
    ("stop", lambda m, s: m.stop(s, T), "stopped"),
    ("control-start", lambda m, s: m.control(s, "start", T), "active"),
    ("speech_started", lambda m, s: m.speech_started(s, T), "listening"),
    ("audio", lambda m, s: m.audio(s, T, 10, 0.5), "listening"),
    ("utterance_ended", lambda m, s: m.utterance_ended(s, T), "processing"),
    ("barge_in", lambda m, s: m.barge_in(s, T), "listening"),
    ("turn_failed", lambda m, s: m.turn_failed(s, T, "x"), "listening"),
    ("create_session", lambda m, s: m.create_session(s, T), "created"),
    *[(f"{ev}-{svc}", lambda m, s, ev=ev, svc=svc: getattr(m, ev)(s, svc, T), req)
      for svc in SERVICES
      for ev, req in [("service_requested", "waiting"), ("service_started", "executing"),
                      ("service_completed", "complete"), ("kafka_timeout", "waiting")]],
    *[(f"service_failed-{svc}", lambda m, s, svc=svc: m.service_failed(s, svc, T, "x"), "idle")
      for svc in SERVICES],
]


@pytest.mark.parametrize("setup", [{}, {"pipeline": P, "services": TTS_SPEAKING}, {"pipeline": "complete"},
                                   {"lifecycle": "paused"}, {"lifecycle": "created"}],
                         ids=["listening", "mid-turn", "complete", "paused", "created"])
@pytest.mark.parametrize(("name", "act", "requested"), EVERY_EVENT, ids=[e[0] for e in EVERY_EVENT])
def test_stopped_session_refuses_everything(m, rec, setup, name, act, requested):
    given(m, rec, **setup)
    m.stop("s1", 1.0)
    rec.seen.clear()
    err = refused(m, rec, "s1", act)
    assert_illegal(err, "s1", "lifecycle", "stopped", requested)


def test_unknown_service_failure_is_refused(m, rec):
    given(m, rec, pipeline=P, services={"stt": "executing"})
    err = refused(m, rec, "s1", lambda m, s: m.service_failed(s, "whisper", T, "x"))
    assert isinstance(err, IllegalTransition)
    assert (err.session_id, err.service, err.requested) == ("s1", None, "idle")
    assert "whisper" in str(err)


@pytest.mark.parametrize(("buffer_size", "quality"), [(-1, 0.5), (10, 1.5), (10, -0.1)])
def test_bad_audio_values_raise_value_error_and_change_nothing(m, rec, buffer_size, quality):
    given(m, rec)
    m.audio("s1", 1.0, 100, 0.5)
    rec.seen.clear()
    err = refused(m, rec, "s1", lambda m, s: m.audio(s, T, buffer_size, quality), ValueError)
    assert "s1" in str(err)
    assert (m.snapshot("s1", T).buffer_size, m.snapshot("s1", T).audio_quality) == (100, 0.5)


@pytest.mark.parametrize(("name", "act", "requested"), EVERY_EVENT, ids=[e[0] for e in EVERY_EVENT])
def test_unknown_session(m, rec, name, act, requested):
    given(m, rec, "other")
    before = m.snapshot("other", T)
    if name == "create_session":
        act(m, "ghost")  # creating is the one thing an unknown id allows
        assert "ghost" in m and rec.events() == ["session_created"]
    else:
        err = refused(m, rec, "ghost", act, UnknownSession)
        assert err.session_id == "ghost" and "ghost" not in m
    assert m.snapshot("other", T) == before


def test_negative_retry_budget_is_rejected():
    with pytest.raises(ValueError, match="max_retries"):
        PipelineStateManager(max_retries=-1)
    assert PipelineStateManager().max_retries == 3


# Kafka timeouts and the retry budget --------------------------------------------------------------
@pytest.mark.parametrize("max_retries", [0, 1, 3])
@pytest.mark.parametrize("service", SERVICES)
def test_kafka_timeout_retry_budget(service, max_retries):
    m, rec = PipelineStateManager(max_retries=max_retries), Recorder()
    m.subscribe(rec)
    services = {**IDLE_ALL, **CONTEXT[service], service: "executing"}
    session_in(m, "s1", pipeline=P, services=services)
    for attempt in range(1, max_retries + 1):
        # timeouts from executing and from waiting both use up the budget
        if attempt % 2 == 0:
            m.service_started("s1", service, 1.0)
        rec.seen.clear()
        before = m.snapshot("s1", T)
        tr = m.kafka_timeout("s1", service, T)
        check(m, rec, tr, before, event="kafka_timeout", service=service, state=P,
              services={**services, service: "waiting"})
    rec.seen.clear()
    before = m.snapshot("s1", T)
    tr = m.kafka_timeout("s1", service, T)
    assert tr.error is not None and tr.error.startswith(f"{service}:") and "Kafka" in tr.error
    assert f"{max_retries + 1} times" in tr.error and f"budget {max_retries}" in tr.error
    check(m, rec, tr, before, event="turn_failed", service=service, state="listening", services=IDLE_ALL,
          error=tr.error, emitted=2)
    first = rec.seen[0]
    assert (first.event, first.service, first.state, first.services) == (
        "kafka_timeout", service, P, {**services, service: "waiting"})
    assert m.status("s1") == "active"


def test_retry_budget_is_per_service(m, rec):
    m = PipelineStateManager(max_retries=1)
    m.subscribe(rec)
    session_in(m, "s1", pipeline=P, services={"stt": "waiting"})
    assert m.kafka_timeout("s1", "stt", 1.0).event == "kafka_timeout"
    m.service_started("s1", "stt", 1.1)
    m.service_completed("s1", "stt", 1.2)
    m.service_requested("s1", "llm", 1.3)
    assert m.kafka_timeout("s1", "llm", 1.4).event == "kafka_timeout"  # STT's retry is not LLM's
    assert m.kafka_timeout("s1", "llm", 1.5).event == "turn_failed"


def test_retry_budget_resets_each_turn(m, rec):
    m = PipelineStateManager(max_retries=1)
    m.subscribe(rec)
    session_in(m, "s1", pipeline=P, services={"stt": "waiting"})
    assert m.kafka_timeout("s1", "stt", 1.0).event == "kafka_timeout"
    m.service_failed("s1", "stt", 1.1, "boom")
    m.utterance_ended("s1", 2.0)
    m.service_requested("s1", "stt", 2.1)
    tr = m.kafka_timeout("s1", "stt", 2.2)
    assert (tr.event, tr.turn_id, tr.stt) == ("kafka_timeout", 2, "waiting")
    assert m.kafka_timeout("s1", "stt", 2.3).event == "turn_failed"


def test_retry_budget_survives_pause_only_until_the_next_turn(m, rec):
    m = PipelineStateManager(max_retries=1)
    m.subscribe(rec)
    session_in(m, "s1", pipeline=P, services={"stt": "waiting"})
    m.kafka_timeout("s1", "stt", 1.0)
    m.pause("s1", 1.1)
    m.start("s1", 1.2)
    m.utterance_ended("s1", 1.3)
    m.service_requested("s1", "stt", 1.4)
    assert m.kafka_timeout("s1", "stt", 1.5).event == "kafka_timeout"


# Failures, barge-in, pause, stop ------------------------------------------------------------------
@pytest.mark.parametrize("state", ["waiting", "executing"])
@pytest.mark.parametrize("service", SERVICES)
def test_service_failed_fails_the_turn(m, rec, service, state):
    services = {**IDLE_ALL, **CONTEXT[service], service: state}
    before = given(m, rec, pipeline=P, services=services, turns=1)
    tr = m.service_failed("s1", service, T, "HTTP 500")
    check(m, rec, tr, before, event="turn_failed", service=service, state="listening", services=IDLE_ALL,
          error=f"{service}: HTTP 500")
    assert tr.turn_id == 2
    assert m.utterance_ended("s1", T + 1).turn_id == 3  # the next turn may start at once


@pytest.mark.parametrize("llm", ["executing", "complete"])
def test_barge_in_cancels_the_reply(m, rec, llm):
    before = given(m, rec, pipeline=P, services={"stt": "complete", "llm": llm, "tts": "executing"})
    tr = m.barge_in("s1", T)
    check(m, rec, tr, before, event="barge_in", state="listening", services=IDLE_ALL)
    m.audio("s1", T + 0.1, 512, 0.9)
    nxt = m.utterance_ended("s1", T + 0.2)
    assert (nxt.turn_id, nxt.state, nxt.services, nxt.buffer_size) == (2, P, IDLE_ALL, 512)


MID_TURN = [
    pytest.param({}, id="listening"),
    pytest.param({"pipeline": P}, id="processing-idle"),
    pytest.param({"pipeline": P, "services": {"stt": "waiting"}}, id="stt-waiting"),
    pytest.param({"pipeline": P, "services": {"stt": "complete", "llm": "executing"}}, id="llm-executing"),
    pytest.param({"pipeline": P, "services": {"stt": "complete", "llm": "executing", "tts": "waiting"}},
                 id="tts-waiting"),
    pytest.param({"pipeline": P, "services": TTS_SPEAKING}, id="tts-executing"),
    pytest.param({"pipeline": "complete"}, id="complete"),
]


@pytest.mark.parametrize("setup", MID_TURN)
def test_pause_cancels_the_turn_and_start_resumes(m, rec, setup):
    before = given(m, rec, turns=1, **setup)
    if before.state == "listening":
        m.audio("s1", 1.0, 777, 0.4)  # buffered audio is dropped too
        rec.seen.clear()
        before = m.snapshot("s1", 1.0)
    tr = m.pause("s1", T)
    check(m, rec, tr, before, event="session_paused", status="paused", state="listening", services=IDLE_ALL,
          buffer_size=0)
    rec.seen.clear()
    paused = m.snapshot("s1", T)
    tr = m.start("s1", T)
    check(m, rec, tr, paused, event="session_resumed", state="listening", services=IDLE_ALL, buffer_size=0)
    assert tr.turn_id == before.turn_id
    nxt = m.utterance_ended("s1", T + 1)
    assert (nxt.turn_id, nxt.state, nxt.services) == (before.turn_id + 1, P, IDLE_ALL)


@pytest.mark.parametrize("setup", [*MID_TURN[:-1], pytest.param({"lifecycle": "paused"}, id="paused"),
                                   pytest.param({"lifecycle": "created"}, id="created")])
def test_stop_mid_turn(m, rec, setup):
    before = given(m, rec, **setup)
    tr = m.stop("s1", T)
    check(m, rec, tr, before, event="session_stopped", status="stopped", state="complete", services=IDLE_ALL,
          buffer_size=0)


def test_stop_after_a_completed_turn_keeps_the_completed_services(m, rec):
    before = given(m, rec, pipeline="complete")
    tr = m.stop("s1", T, reason="caller hung up")
    check(m, rec, tr, before, event="session_stopped", status="stopped", state="complete", services=DONE_ALL,
          error="caller hung up")


def test_forget_a_stopped_session(m, rec):
    given(m, rec, "a", pipeline="complete", turns=2)
    given(m, rec, "b")
    m.stop("a", T)
    m.forget("a")
    assert "a" not in m and m.session_ids == ["b"]
    with pytest.raises(UnknownSession):
        m.snapshot("a", T)
    tr = m.create_session("a", T + 1)  # the id may be used again, for a fresh session
    assert (tr.seq, tr.turn_id, tr.status) == (0, 0, "created")


# Sequence numbers, independence, buffer and turn id -----------------------------------------------
def test_seq_increases_by_one_per_transition_per_session(m, rec):
    m.create_session("a", 0.0)
    m.create_session("b", 0.0)
    m.start("a", 0.1)
    m.start("b", 0.1)
    for sid in ("a", "b", "a", "a"):
        m.speech_started(sid, 0.2)
    with pytest.raises(IllegalTransition):
        m.barge_in("a", 0.3)  # a refused event uses no sequence number
    m.utterance_ended("a", 0.4)
    m.pause("b", 0.5)
    m.service_requested("a", "stt", 0.6)
    m.snapshot("a", 0.7)  # a snapshot is not a transition
    m.stop("a", 0.8)
    for sid in ("a", "b"):
        seqs = [tr.seq for tr in rec.seen if tr.session_id == sid]
        assert seqs == list(range(len(seqs)))
        assert m.snapshot(sid, 1.0).seq == len(seqs) - 1
    assert [tr.seq for tr in rec.seen if tr.session_id == "a"] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_sessions_are_independent(m, rec):
    others = {
        "paused": session_in(m, "paused", lifecycle="paused", turns=1),
        "speaking": session_in(m, "speaking", pipeline=P, services=TTS_SPEAKING, turns=2),
        "created": session_in(m, "created", lifecycle="created"),
        "stopped": session_in(m, "stopped", lifecycle="stopped"),
    }
    rec.seen.clear()
    m.create_session("x", 0.0)
    script: list[Callable[[], object]] = [
        lambda: m.start("x", 1), lambda: m.speech_started("x", 1), lambda: m.audio("x", 1, 999, 0.2),
        lambda: m.utterance_ended("x", 2), lambda: m.service_requested("x", "stt", 2),
        lambda: m.kafka_timeout("x", "stt", 2), lambda: m.service_started("x", "stt", 2),
        lambda: m.service_completed("x", "stt", 3), lambda: m.service_requested("x", "llm", 3),
        lambda: m.service_started("x", "llm", 3), lambda: m.service_requested("x", "tts", 3),
        lambda: m.service_started("x", "tts", 3), lambda: m.barge_in("x", 4),
        lambda: m.utterance_ended("x", 5),
        lambda: m.service_requested("x", "stt", 5), lambda: m.service_failed("x", "stt", 5, "x"),
        lambda: m.pause("x", 6), lambda: m.start("x", 6), lambda: m.stop("x", 7),
    ]
    refused_script = [lambda: m.service_requested("x", "llm", 2), lambda: m.pause("x", 8)]
    steps = ([(step, True) for step in script[:5]] + [(refused_script[0], False)]
             + [(step, True) for step in script[5:]] + [(refused_script[1], False)])
    for step, legal in steps:
        if legal:
            assert step().session_id == "x"
        else:
            with pytest.raises(IllegalTransition):
                step()
        for sid, snap in others.items():
            assert m.snapshot(sid, 1.0) == snap
    assert m.status("x") == "stopped"
    assert len(rec.seen) == 1 + len(script)
    assert {tr.session_id for tr in rec.seen} == {"x"}


def test_buffer_size_follows_audio_and_resets_when_stt_is_requested(m, rec):
    session_in(m, "s1")
    assert m.audio("s1", 1.0, 100, 0.3).buffer_size == 100
    tr = m.audio("s1", 1.1, 250, 0.6)
    assert (tr.buffer_size, tr.audio_quality) == (250, 0.6)  # the latest size, not a sum
    assert m.speech_started("s1", 1.2).buffer_size == 250
    assert m.utterance_ended("s1", 1.3).buffer_size == 250
    assert m.service_requested("s1", "stt", 1.4).buffer_size == 0
    m.service_started("s1", "stt", 1.5)
    m.service_completed("s1", "stt", 1.5)
    for name in ("llm", "tts"):
        _drive(m, "s1", name, "complete", 1.5)
    assert m.snapshot("s1", 1.6).buffer_size == 0
    assert m.speech_started("s1", 1.7).buffer_size == 0
    assert m.audio("s1", 1.8, 64, 0.6).buffer_size == 64
    assert all(tr.buffer_size == 0 for tr in rec.seen if tr.stt != "idle")


def test_turn_id_increments_only_at_utterance_ended(m, rec):
    session_in(m, "s1")
    m.speech_started("s1", 1.0)
    m.audio("s1", 1.1, 10, 0.5)
    m.utterance_ended("s1", 1.2)
    for name in SERVICES:
        _drive(m, "s1", name, "complete", 1.3)
    m.speech_started("s1", 2.0)
    m.utterance_ended("s1", 2.1)
    m.service_requested("s1", "stt", 2.2)
    m.service_failed("s1", "stt", 2.3, "x")
    m.utterance_ended("s1", 3.0)
    m.pause("s1", 3.1)
    m.start("s1", 3.2)
    m.stop("s1", 3.3)
    expected, turn = [], 0
    for tr in rec.seen:
        turn += tr.event == "utterance_ended"
        expected.append(turn)
    assert [tr.turn_id for tr in rec.seen] == expected
    assert expected[-1] == 3


def test_a_full_turn_emits_every_step_in_order(m, rec):
    session_in(m, "s1", pipeline="complete")
    assert rec.events() == [
        "session_created", "session_started", "audio", "utterance_ended",
        "service_requested", "service_started", "service_completed",
        "service_requested", "service_started", "service_completed",
        "service_requested", "service_started", "service_completed",
    ]
    assert [tr.service for tr in rec.seen[4:]] == ["stt"] * 3 + ["llm"] * 3 + ["tts"] * 3
    assert [tr.state for tr in rec.seen][-2:] == [P, "complete"]


# Observers ----------------------------------------------------------------------------------------
def test_every_observer_gets_every_transition_in_order(m):
    first, second = Recorder(), Recorder()
    m.subscribe(first)
    unsubscribe = m.subscribe(second)
    session_in(m, "s1", pipeline=P)
    assert first.seen == second.seen and len(first.seen) == 4
    unsubscribe()
    unsubscribe()  # twice is harmless
    m.service_requested("s1", "stt", T)
    assert len(first.seen) == 5 and len(second.seen) == 4
    m.snapshot("s1", T)
    assert len(first.seen) == 5


def test_observer_may_unsubscribe_itself_during_delivery(m):
    later = Recorder()

    def once(tr: Transition) -> None:
        unsubscribe()

    unsubscribe = m.subscribe(once)
    m.subscribe(later)
    m.create_session("s1", 0.0)
    assert later.events() == ["session_created"]


def test_llm_cannot_time_out_once_tts_speaks(m, rec):
    given(m, rec, pipeline=P, services={"stt": "complete", "llm": "executing", "tts": "executing"})
    err = refused(m, rec, "s1", lambda m, sid: m.kafka_timeout(sid, "llm", T))
    assert_illegal(err, "s1", "llm", "executing", "waiting")
    assert "tts is 'executing'" in str(err)
