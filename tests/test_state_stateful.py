"""Stateful (model-based) test of the pipeline state manager.

A hypothesis :class:`RuleBasedStateMachine` fires random events, legal and illegal, at three session
ids. Every event is also run through a small reference model written from the tables of
:mod:`pipesim.state.rules` (:func:`predict`): the manager must accept exactly what the model accepts,
end in the state the model predicts and emit the transitions it predicts; a refused event must raise,
change nothing and emit nothing. Invariants that the manager guarantees on its own are checked after
every step for every known session, and an observer (:class:`Ledger`) checks the emitted stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pipesim.state import IllegalTransition, PipelineStateManager, StateError, Transition, UnknownSession
from pipesim.state.rules import LIFECYCLE, PIPELINE, PREREQUISITES, REQUESTED, SERVICE, SERVICES

SIDS = ("a", "b", "c")
IDLE = dict.fromkeys(SERVICES, "idle")
SERVICE_TABLE_EVENTS = ("service_requested", "service_started", "service_completed", "kafka_timeout")


# Reference model ----------------------------------------------------------------------------------
@dataclass
class Model:
    """What a session should look like, as far as the rules say."""

    status: str = "created"
    state: str = "listening"
    services: dict[str, str] = field(default_factory=lambda: dict(IDLE))
    buffer_size: int = 0
    audio_quality: float = 0.0
    turn_id: int = 0
    seq: int = 1  # the next sequence number (session_created used 0)
    retries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SERVICES, 0))


@dataclass
class Outcome:
    error: type[Exception] | None  # the exception the event must raise, or None if it is accepted
    after: Model | None  # the session after the event (None: forgotten)
    events: list[str]  # the transitions it must emit, in order


def predict(cur: Model | None, ev: str, service: str | None, size: int, quality: float,
            max_retries: int) -> Outcome:
    """The outcome of event ``ev`` on a session in state ``cur`` (None: unknown id), from the tables."""

    def refuse(exc: type[Exception] = IllegalTransition) -> Outcome:
        return Outcome(exc, cur, [])

    if cur is None:
        if ev == "create_session":
            return Outcome(None, Model(), ["session_created"])
        return refuse(UnknownSession)
    if ev == "create_session":
        return refuse()
    # A deep copy (the two dicts are its only mutable fields), written out: copy.deepcopy took half the time.
    new = replace(cur, services=dict(cur.services), retries=dict(cur.retries))

    def reset(state: str) -> None:
        new.state, new.services = state, dict(IDLE)

    def accept(*events: str) -> Outcome:
        new.seq += len(events)
        return Outcome(None, new, list(events))

    if ev in ("start", "pause", "stop"):
        target = LIFECYCLE[cur.status].get(ev)
        if target is None:
            return refuse()
        new.status = target
        if ev == "start":
            return accept("session_resumed" if cur.status == "paused" else "session_started")
        new.buffer_size = 0
        if ev == "pause":
            reset("listening")
            return accept("session_paused")
        if not (cur.state == "complete" and all(v == "complete" for v in cur.services.values())):
            reset("complete")
        return accept("session_stopped")
    if ev == "forget":
        return Outcome(None, None, []) if cur.status == "stopped" else refuse()
    if cur.status != "active":
        return refuse()
    if ev in ("speech_started", "audio", "utterance_ended"):
        if ev not in PIPELINE[cur.state]:
            return refuse()
        if ev == "audio":
            if size < 0 or not 0.0 <= quality <= 1.0:
                return refuse(ValueError)
            new.buffer_size, new.audio_quality = size, quality
        elif ev == "speech_started":
            if cur.state == "complete":
                reset("listening")
        else:
            new.state = PIPELINE[cur.state][ev]
            new.turn_id += 1
            new.retries = dict.fromkeys(SERVICES, 0)
        return accept(ev)
    if ev in ("barge_in", "turn_failed"):
        if cur.state != "processing" or (ev == "barge_in" and cur.services["tts"] != "executing"):
            return refuse()
        reset(PIPELINE[cur.state][ev])
        return accept(ev)
    if ev == "service_failed":
        if cur.services.get(str(service)) not in ("waiting", "executing"):
            return refuse()
        reset(PIPELINE[cur.state]["turn_failed"])
        return accept("turn_failed")
    assert ev in SERVICE_TABLE_EVENTS, ev
    if service not in SERVICES or cur.state != "processing":
        return refuse()
    target = SERVICE[cur.services[service]].get(ev)
    if target is None:
        return refuse()
    needs = PREREQUISITES.get((service, ev))
    if needs is not None and cur.services[needs[0]] not in needs[1]:
        return refuse()
    new.services[service] = target
    if (ev, service) == ("service_requested", "stt"):
        new.buffer_size = 0
    if (ev, service) == ("service_completed", "tts"):
        new.state = PIPELINE[cur.state]["turn_completed"]
    if ev == "kafka_timeout":
        new.retries[service] += 1
        if new.retries[service] > max_retries:
            reset(PIPELINE[cur.state]["turn_failed"])
            return accept("kafka_timeout", "turn_failed")
    return accept(ev)


# Invariants the manager must keep on its own ------------------------------------------------------
def check_invariants(s: Transition) -> None:
    sv = s.services
    where = f"{s.session_id}: {s}"
    busy = [name for name, v in sv.items() if v in ("waiting", "executing")]
    if busy:
        assert (s.status, s.state) == ("active", "processing"), f"{busy} busy outside processing; {where}"
    if s.state == "listening":
        assert sv == IDLE, f"listening with non-idle services; {where}"
    if s.state == "processing":
        assert s.status == "active" and sv["tts"] != "complete", where
    if s.state == "complete":
        assert set(sv.values()) == {"complete"} or (s.status == "stopped" and sv == IDLE), where
    if sv["llm"] != "idle":
        assert sv["stt"] == "complete", f"LLM ahead of STT; {where}"
    if sv["tts"] != "idle":
        assert sv["llm"] in ("executing", "complete"), f"TTS ahead of the LLM; {where}"
    if sv["tts"] == "complete":
        assert sv["llm"] == "complete" and s.state == "complete", where
    if sv["stt"] != "idle":
        assert s.buffer_size == 0, f"STT took the audio but the buffer is not empty; {where}"
    if s.status == "created":
        assert (s.state, sv, s.turn_id, s.buffer_size, s.seq) == ("listening", IDLE, 0, 0, 0), where
    if s.status == "paused":
        assert (s.state, sv, s.buffer_size) == ("listening", IDLE, 0), where
    if s.status == "stopped":
        assert (s.state, s.buffer_size) == ("complete", 0), where
    assert s.buffer_size >= 0 and 0.0 <= s.audio_quality <= 1.0, where


def state_of(tr: Transition) -> tuple[object, ...]:
    """Everything a transition says about the session (not the event, its time or its seq)."""
    return (tr.session_id, tr.turn_id, tr.status, tr.state, tr.stt, tr.llm, tr.tts, tr.buffer_size,
            tr.audio_quality)


class Ledger:
    """An observer that checks the transition stream as it is delivered."""

    def __init__(self) -> None:
        self.all: list[Transition] = []
        self.last: dict[str, Transition] = {}
        self.stopped: set[str] = set()

    def __call__(self, tr: Transition) -> None:
        sid = tr.session_id
        assert sid not in self.stopped, f"transition {tr.event} for {sid!r} after it was stopped"
        prev = self.last.get(sid)
        assert tr.seq == (0 if prev is None else prev.seq + 1), f"seq {tr.seq} after {prev}"
        assert (tr.event == "session_created") == (prev is None), tr
        if prev is not None:
            assert tr.turn_id in (prev.turn_id, prev.turn_id + 1)
        self.all.append(tr)
        self.last[sid] = tr
        if tr.event == "session_stopped":
            self.stopped.add(sid)

    def forgotten(self, sid: str) -> None:
        self.stopped.discard(sid)
        del self.last[sid]


# The machine --------------------------------------------------------------------------------------
sids = st.sampled_from(SIDS)
#: mostly real services, sometimes an unknown name
service_names = st.sampled_from([*SERVICES, *SERVICES, *SERVICES, "whisper"])
#: (event, service) pairs that drive a session forward, for :meth:`PipelineMachine.legal_steps`
FORWARD: list[tuple[str, str | None]] = [
    ("create_session", None), ("start", None), ("forget", None), ("speech_started", None), ("audio", None),
    ("utterance_ended", None), ("barge_in", None),
    *[(ev, svc) for ev in SERVICE_TABLE_EVENTS for svc in SERVICES],
]


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._setup(3)

    def _setup(self, max_retries: int) -> None:
        self.m = PipelineStateManager(max_retries=max_retries)
        self.ledger = Ledger()
        self.m.subscribe(self.ledger)
        self.model: dict[str, Model] = {}
        self.t = 0.0

    @initialize(max_retries=st.integers(0, 2))
    def budget(self, max_retries: int) -> None:
        self._setup(max_retries)

    # the one place events are fired ------------------------------------------------------------------
    def fire(self, sid: str, ev: str, service: str | None = None, size: int = 0, quality: float = 0.0,
             reason: str = "stopped") -> None:
        self.t += 0.01
        t, m = self.t, self.m
        calls: dict[str, Callable[[], object]] = {
            "create_session": lambda: m.create_session(sid, t), "start": lambda: m.start(sid, t),
            "pause": lambda: m.pause(sid, t), "stop": lambda: m.stop(sid, t, reason),
            "forget": lambda: m.forget(sid), "speech_started": lambda: m.speech_started(sid, t),
            "audio": lambda: m.audio(sid, t, size, quality),
            "utterance_ended": lambda: m.utterance_ended(sid, t),
            "barge_in": lambda: m.barge_in(sid, t), "turn_failed": lambda: m.turn_failed(sid, t, reason),
            "service_failed": lambda: m.service_failed(sid, str(service), t, reason),
            **{e: (lambda e=e: getattr(m, e)(sid, service, t)) for e in SERVICE_TABLE_EVENTS},
        }
        out = predict(self.model.get(sid), ev, service, size, quality, m.max_retries)
        known = sid in m
        before = m.snapshot(sid, t) if known else None
        emitted = len(self.ledger.all)
        try:
            result = calls[ev]()
        except (StateError, ValueError) as exc:
            assert out.error is not None, f"{ev}({sid!r}, {service!r}) refused, the rules allow it: {exc}"
            assert isinstance(exc, out.error), f"{ev} raised {exc!r}, expected {out.error.__name__}"
            assert len(self.ledger.all) == emitted, "a refused event emitted a transition"
            if known:
                assert m.snapshot(sid, t) == before, "a refused event changed the session"
            else:
                assert sid not in m
            if isinstance(exc, StateError):
                assert exc.session_id == sid
            if isinstance(exc, IllegalTransition):
                name = "create" if ev == "create_session" else ev  # the manager's name for the event
                assert exc.requested == REQUESTED.get(name, name)
                self.check_refusal(exc, before)
            return
        assert out.error is None, (f"{ev}({sid!r}, {service!r}) accepted, the rules refuse it "
                                   f"(expected {out.error.__name__}) on {before}")
        new = self.ledger.all[emitted:]
        assert [tr.event for tr in new] == out.events
        if ev == "forget":
            assert result is None and sid not in m and sid not in m.session_ids
            self.ledger.forgotten(sid)
            del self.model[sid]
            return
        assert isinstance(result, Transition) and result == new[-1]
        assert all(tr.session_id == sid and tr.t == t for tr in new)
        assert all(tr.service == (service if ev in (*SERVICE_TABLE_EVENTS, "service_failed") else None)
                   for tr in new)
        if ev == "service_failed":
            assert result.error == f"{service}: {reason}"
        elif ev == "turn_failed":
            assert result.error == reason
        elif result.event == "turn_failed":  # the Kafka retry budget ran out
            assert result.error is not None and result.error.startswith(f"{service}: Kafka timed out")
        elif ev == "stop":
            assert result.error == (None if reason == "stopped" else reason)
        else:
            assert result.error is None
        assert out.after is not None
        self.model[sid] = out.after

    def check_refusal(self, exc: IllegalTransition, before: Transition | None) -> None:
        assert before is not None
        if exc.part == "lifecycle":
            assert exc.current == before.status
        elif exc.part == "pipeline":
            assert exc.current == before.state
        elif exc.part in SERVICES:
            assert exc.service == exc.part and exc.current == before.services[exc.part]
        else:  # an unknown service name
            assert exc.service is None and "whisper" in exc.part

    # rules --------------------------------------------------------------------------------------------
    @rule(sid=sids)
    def create(self, sid: str) -> None:
        self.fire(sid, "create_session")

    @rule(sid=sids)
    def start(self, sid: str) -> None:
        self.fire(sid, "start")

    @rule(sid=sids)
    def pause(self, sid: str) -> None:
        self.fire(sid, "pause")

    @rule(sid=sids, reason=st.sampled_from(["stopped", "caller hung up"]))
    def stop(self, sid: str, reason: str) -> None:
        self.fire(sid, "stop", reason=reason)

    @rule(sid=sids)
    def forget(self, sid: str) -> None:
        self.fire(sid, "forget")

    @rule(sid=sids)
    def speech_started(self, sid: str) -> None:
        self.fire(sid, "speech_started")

    @rule(sid=sids, size=st.integers(-2, 64_000),
          quality=st.floats(-0.1, 1.1, allow_nan=False) | st.sampled_from([0.0, 1.0]))
    def audio(self, sid: str, size: int, quality: float) -> None:
        self.fire(sid, "audio", size=size, quality=quality)

    @rule(sid=sids)
    def utterance_ended(self, sid: str) -> None:
        self.fire(sid, "utterance_ended")

    @rule(sid=sids, ev=st.sampled_from(SERVICE_TABLE_EVENTS[:3]), service=service_names)
    def service_event(self, sid: str, ev: str, service: str) -> None:
        self.fire(sid, ev, service)

    @rule(sid=sids, service=service_names)
    def kafka_timeout(self, sid: str, service: str) -> None:
        self.fire(sid, "kafka_timeout", service)

    @rule(sid=sids, service=service_names)
    def service_failed(self, sid: str, service: str) -> None:
        self.fire(sid, "service_failed", service, reason="HTTP 500")

    @rule(sid=sids)
    def turn_failed(self, sid: str) -> None:
        self.fire(sid, "turn_failed", reason="no answer")

    @rule(sid=sids)
    def barge_in(self, sid: str) -> None:
        self.fire(sid, "barge_in")

    @rule(sid=sids, n=st.integers(1, 12), timeouts=st.booleans(),
          then=st.sampled_from([None, None, "pause", "stop"]), data=st.data())
    def legal_steps(self, sid: str, n: int, timeouts: bool, then: str | None, data: st.DataObject) -> None:
        """Up to ``n`` events the model accepts for ``sid`` that move it on (Kafka timeouts among them if
        ``timeouts``), so that random runs get deep into turns (TTS speaking and complete, barge-in, retry
        budgets) as well as hitting illegal events; ``then`` pauses or stops it wherever it got to."""
        for _ in range(n):
            cur = self.model.get(sid)
            options = [(ev, svc) for ev, svc in FORWARD
                       if (timeouts or ev != "kafka_timeout")
                       and predict(cur, ev, svc, 3200, 0.8, self.m.max_retries).error is None
                       and not (ev == "speech_started" and cur is not None and cur.state == "listening")]
            if not options:
                break
            ev, svc = data.draw(st.sampled_from(options))
            self.fire(sid, ev, svc, size=3200, quality=0.8)
        if then is not None:
            self.fire(sid, then)

    # invariants -------------------------------------------------------------------------------------
    @invariant()
    def sessions_match_the_model(self) -> None:
        assert sorted(self.m.session_ids) == sorted(self.model)
        for sid in self.m.session_ids:
            snap, want = self.m.snapshot(sid, self.t), self.model[sid]
            got = (snap.status, snap.state, snap.services, snap.buffer_size, snap.audio_quality, snap.turn_id,
                   snap.seq + 1)  # the model counts the next seq; a snapshot carries the last one
            assert got == (want.status, want.state, want.services, want.buffer_size, want.audio_quality,
                           want.turn_id, want.seq), sid

    @invariant()
    def sessions_are_coherent(self) -> None:
        for sid in self.m.session_ids:
            check_invariants(self.m.snapshot(sid, self.t))

    @invariant()
    def last_transition_is_the_snapshot(self) -> None:
        assert sorted(self.ledger.last) == sorted(self.m.session_ids)
        for sid in self.m.session_ids:
            snap, last = self.m.snapshot(sid, self.t), self.ledger.last[sid]
            assert state_of(snap) == state_of(last)
            assert snap.seq == last.seq
            assert (last.status == "stopped") == (sid in self.ledger.stopped)


PipelineMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None,
                                             database=None, suppress_health_check=[HealthCheck.too_slow])
TestPipelineMachine = PipelineMachine.TestCase


# The model itself must be right for the checks above to mean anything ----------------------------
@pytest.mark.parametrize("max_retries", [0, 2])
def test_model_predicts_a_full_turn_and_the_retry_budget(max_retries):
    cur = predict(None, "create_session", None, 0, 0.0, max_retries).after
    steps = [("start", None), ("audio", None), ("utterance_ended", None), ("service_requested", "stt"),
             ("service_started", "stt"), ("service_completed", "stt"), ("service_requested", "llm"),
             ("service_started", "llm"), ("service_requested", "tts"), ("service_started", "tts")]
    for ev, svc in steps:
        out = predict(cur, ev, svc, 100, 0.5, max_retries)
        assert out.error is None, (ev, svc)
        cur = out.after
    assert predict(cur, "service_completed", "tts", 0, 0.0, max_retries).error is IllegalTransition
    assert predict(cur, "barge_in", None, 0, 0.0, max_retries).after.state == "listening"
    for _ in range(max_retries):
        cur = predict(cur, "kafka_timeout", "tts", 0, 0.0, max_retries).after
        cur = predict(cur, "service_started", "tts", 0, 0.0, max_retries).after
    out = predict(cur, "kafka_timeout", "tts", 0, 0.0, max_retries)
    assert out.events == ["kafka_timeout", "turn_failed"] and out.after.services == IDLE
    assert predict(cur, "audio", None, -1, 0.5, max_retries).error is IllegalTransition  # processing first
    assert predict(None, "start", None, 0, 0.0, max_retries).error is UnknownSession
