"""What the admin API's endpoints do to a server: the one place that knows the model, the hub and the clock.

:class:`Operations` is handed a :class:`Served` (the hub, the clock, the journal, the access checks and the
live model; never the server itself) and raises :class:`~pipesim.live.admin_models.AdminError` for what it
cannot honour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal, Protocol

from pipesim.errors import ScenarioError
from pipesim.live.access import Access
from pipesim.live.admin_models import (
    LISTED_TRANSITIONS,
    AdminError,
    Clock,
    ClockMoved,
    CreateSession,
    FaultApplied,
    FaultBody,
    JournalFind,
    JournalQuery,
    PushBody,
    Recording,
    ResetBody,
    RunUntilBody,
    RunUntilResult,
    Scheduled,
    ServicesModel,
    Session,
    StubAnswer,
    StubBody,
)
from pipesim.live.clock import Clock as ServerClock
from pipesim.live.connection import RTVI_PATH
from pipesim.live.hub import Hub
from pipesim.live.journal import Journal
from pipesim.live.pacer import Pacer
from pipesim.live.recording import Recorder
from pipesim.live.source import LiveModel
from pipesim.live.stubs import JOURNAL_FIELDS, Stub, Stubs, filled, matches
from pipesim.protocol import FaultInjection, ProtocolError, parse_message, wire_messages
from pipesim.scenario import Scenario, bundled_scenarios, load_scenario, scenario_path, validate_scenario
from pipesim.state import IllegalTransition, Transition, UnknownSession
from pipesim.vocabulary import SERVER_MESSAGE_TYPES


class Served(Protocol):
    """What the admin API is handed (a :class:`~pipesim.live.server.LiveServer` or ``ReplayServer`` is one):
    the hub, the clock, the journal, the access checks, and the live model (None: a replay of ``source``)."""

    kind: Literal["live", "replay"]
    hub: Hub
    timekeeper: ServerClock
    journal: Journal | None
    access: Access
    model: LiveModel | None
    source: str | None
    stubs: Stubs | None

    @property
    def recorder(self) -> Recorder | None: ...

    def start_recording(self, path: str | Path) -> Recorder: ...

    def stop_recording(self) -> Recorder | None: ...


# The operations ----------------------------------------------------------------------------------------
class _Passed:
    """The transitions a clock move passes: counted, the first ``limit`` kept (the answer stays bounded)."""

    __slots__ = ("limit", "kept", "total")

    def __init__(self, limit: int) -> None:
        self.limit, self.total = limit, 0
        self.kept: list[Transition] = []

    def add(self, tr: Transition) -> None:
        self.total += 1
        if len(self.kept) < self.limit:
            self.kept.append(tr)


class Operations:
    """What the endpoints do to a server (the one place that knows the server's insides)."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self._admin_ids = itertools.count(1)
        self.created_by_admin: set[str] = set()
        self._push_seq: dict[str, int] = {}  # next seq of sessions the model does not know
        # One clock-moving request at a time: a second step/advance/run-until/reset waits for the first.
        self._moving = asyncio.Lock()
        if server.model is not None:
            server.model.on_reset(self._forget_admin)

    # Shared helpers
    @property
    def live(self) -> LiveModel:
        """The live model (a replay has none: 409)."""
        if self.server.model is None:
            raise self._live_only()
        return self.server.model

    def _live_only(self) -> AdminError:
        return AdminError(409, "unsupported", f"this server replays {self.server.source}; "
                          "only the clock, seek, the journal and health are available")

    def clock(self) -> Clock:
        return Clock(**self.server.timekeeper.reading())

    def session(self, sid: str) -> Session:
        model = self.live
        mgr = model.sim.manager
        if sid not in mgr:
            raise AdminError(404, "unknown_session", f"unknown session {sid!r}")
        snap = mgr.snapshot(sid, model.pacer.now())
        stopped = snap.status == "stopped"
        if model.scripted(sid):
            by = "scenario"
        elif sid in self.created_by_admin:
            by = "admin"
        else:
            by = "client"
        return Session(session_id=sid, status=snap.status, state=snap.state,
                       services=ServicesModel(**snap.services), turn_id=snap.turn_id,
                       seq=snap.seq + 1 if stopped else snap.seq,  # the session_ended that followed the stop
                       buffer_size=snap.buffer_size, audio_quality=snap.audio_quality, created_by=by)

    def sessions(self) -> list[Session]:
        return [self.session(sid) for sid in self.live.sim.manager.session_ids]

    def create(self, body: CreateSession) -> Session:
        model = self.live
        sid = body.session_id
        while sid is None or (body.session_id is None and sid in model.sim.manager):
            sid = f"admin-{next(self._admin_ids):04d}"
        try:
            model.add_session(sid, turns=body.turns, audio_quality=body.audio_quality, start=body.start)
        except IllegalTransition as exc:
            raise AdminError(409, "illegal_control", f"create: {exc}") from None
        self.created_by_admin.add(sid)
        return self.session(sid)

    def control(self, sid: str, action: str) -> Session:
        model = self.live
        if sid not in model.sim.manager:
            raise AdminError(404, "unknown_session", f"{action}: unknown session {sid!r} "
                             "(create it with POST /__admin/sessions)")
        try:
            model.control(sid, action)
        except UnknownSession:
            raise AdminError(404, "unknown_session", f"{action}: unknown session {sid!r}") from None
        except IllegalTransition as exc:
            raise AdminError(409, "illegal_control", f"{action}: {exc}") from None
        return self.session(sid)

    # Clock
    def pause(self) -> Clock:
        self.server.timekeeper.pause()
        return self.clock()

    def resume(self) -> Clock:
        self.server.timekeeper.resume()
        return self.clock()

    def set_speed(self, speed: float) -> Clock:
        self.server.timekeeper.set_speed(speed)
        return self.clock()

    def seek(self, t: float) -> Clock:
        if not self.server.timekeeper.seekable:
            raise AdminError(409, "unsupported", "seek: only a replay can seek; a live model moves forward "
                             "(use clock/advance or reset)")
        self.server.timekeeper.seek(t)
        return self.clock()

    @contextlib.contextmanager
    def _watching(self, limit: int) -> Generator[_Passed, None, None]:
        """The transitions that happen inside the block: all counted, the first ``limit`` kept."""
        passed = _Passed(limit)
        unsubscribe = self.live.sim.manager.subscribe(passed.add)
        try:
            yield passed
        finally:
            unsubscribe()

    async def step(self, count: int, limit: int = LISTED_TRANSITIONS, wall_timeout: float = 10.0) -> ClockMoved:
        pacer = self.live.pacer
        async with self._moving:
            with self._watching(limit) as passed:
                await pacer.run_until(lambda: passed.total >= count, wall_timeout=wall_timeout)
        return self._moved(passed)

    async def advance(self, seconds: float, limit: int = LISTED_TRANSITIONS) -> ClockMoved:
        pacer = self.live.pacer
        async with self._moving:
            with self._watching(limit) as passed:
                await pacer.advance(seconds)
        return self._moved(passed)

    def _moved(self, passed: _Passed) -> ClockMoved:
        return ClockMoved(clock=self.clock(), transitions=[m for tr in passed.kept for m in wire_messages(tr)],
                          transitions_total=passed.total, truncated=passed.total > len(passed.kept))

    async def run_until(self, body: RunUntilBody) -> RunUntilResult:
        model = self.live
        sid, wanted = body.session_id, body.until.wanted()
        if not wanted:
            raise AdminError(422, "bad_request", "body.until: name at least one of status, state, "
                             "services.stt, services.llm, services.tts")
        if sid not in model.sim.manager and not model.scripted(sid):
            raise AdminError(404, "unknown_session", f"run-until: unknown session {sid!r} (and the scenario "
                             "will not create it)")

        def matches(tr: Transition) -> bool:
            return tr.session_id == sid and all(getattr(tr, k) == v for k, v in wanted.items())

        pacer = model.pacer
        pacer.pause()
        reached = sid in model.sim.manager and matches(model.sim.manager.snapshot(sid, pacer.now()))
        if not reached:
            async with self._moving:
                reached = await self._run_until(pacer, matches, body)
        if not reached:
            where = self.session(sid).model_dump() if sid in model.sim.manager else None
            raise AdminError(408, "timeout", f"run-until: session {sid!r} did not reach "
                             f"{json.dumps(body.until.model_dump(by_alias=True, exclude_none=True))} within "
                             f"{body.timeout_s:g} simulated s (or {body.wall_timeout_s:g} wall s)",
                             session=where, clock=self.clock().model_dump())
        return RunUntilResult(clock=self.clock(), session=self.session(sid), reached=True)

    async def _run_until(self, pacer: Pacer, matches: Callable[[Transition], bool], body: RunUntilBody) -> bool:
        """Step until a transition matches: checked as transitions come, so that the clock stops after the
        model event that made it (a later transition of the same event may move the session on)."""
        hit: list[Transition] = []
        unsubscribe = self.live.sim.manager.subscribe(lambda tr: hit.append(tr) if matches(tr) else None)
        try:
            return await pacer.run_until(lambda: bool(hit), max_t=pacer.env.now + body.timeout_s,
                                         wall_timeout=body.wall_timeout_s)
        finally:
            unsubscribe()

    # Faults and pushes
    def fault(self, body: FaultBody) -> FaultApplied:
        model = self.live
        # The same validation as the WebSocket fault_injection (one source of truth for the fields).
        msg = FaultInjection.model_validate({"type": "fault_injection", **body.model_dump(exclude_none=True)})
        if msg.fault == "disconnect":
            with model.applying() as now:
                sid = msg.session_id
                if sid is not None and sid not in model.sim.manager:
                    raise AdminError(404, "unknown_session", f"disconnect: unknown session {sid!r}")
                disconnected = self.server.hub.disconnect(sid)
            return FaultApplied(applied={"fault": msg.fault, "session_id": sid, "from_t": now, "until_t": now,
                                         "disconnected": disconnected})
        try:
            now = model.inject_fault(msg.fault, msg.service, msg.duration_s)
        except ValueError as exc:
            raise AdminError(422, "bad_request", f"body: {exc}") from None
        return FaultApplied(applied={"fault": msg.fault, "session_id": msg.session_id, "from_t": now,
                                     "service": msg.service, "duration_s": msg.duration_s,
                                     "until_t": now + msg.duration_s})

    def push(self, sid: str, body: PushBody, allow_unknown: bool = False) -> Scheduled:
        model = self.live
        if not allow_unknown and sid not in model.sim.manager:
            # As every other /sessions/{id}/... does: a misspelt id must not go unnoticed.
            raise AdminError(404, "unknown_session", f"push: unknown session {sid!r} (add ?allow_unknown=true "
                             "to send to the watchers of an id the model does not know)")
        checked: list[tuple[float, dict[str, Any]]] = []
        for i, item in enumerate(body.messages):
            message = dict(item.message)
            if message.get("session_id", sid) != sid:
                raise AdminError(422, "bad_request", f"body.messages[{i}].message.session_id: "
                                 f"{message['session_id']!r} is not the session of the path, {sid!r}")
            _check_server_message(message, sid, f"body.messages[{i}].message")
            checked.append((item.after_s, message))
        env = model.sim.env
        for after_s, message in checked:
            if after_s == 0:
                self._deliver(sid, message)
            else:  # a SimPy timeout: a paused clock holds it, step/advance release it on time
                event = env.timeout(after_s)
                event.callbacks.append(lambda _e, m=message: self._deliver(sid, m))
        model.pacer.wake()
        return Scheduled(scheduled=len(checked))

    def _deliver(self, sid: str, message: dict[str, Any]) -> None:
        model = self.live
        now = model.sim.env.now
        out = {**message, "session_id": sid}
        fields = filled(out.get("type"), {"seq": 0, "timestamp": 0.0})
        if "seq" in fields and "seq" not in out:
            mgr = model.sim.manager
            if sid in mgr:
                out["seq"] = mgr.reserve_seq(sid)
            else:
                out["seq"] = self._push_seq.get(sid, 0)
                self._push_seq[sid] = out["seq"] + 1
        if "timestamp" in fields:
            out.setdefault("timestamp", now)
        self.server.hub.publish(sid, out, now)

    # Stubs
    @property
    def stubs(self) -> Stubs:
        """The live model's stubs (a replay has none: 409)."""
        if self.server.stubs is None:
            raise self._live_only()
        return self.server.stubs

    def add_stub(self, body: StubBody) -> StubAnswer:
        stubs, when, then = self.stubs, body.when, body.then
        if body.id is not None and body.id in stubs:
            raise AdminError(409, "conflict", f"stub {body.id!r} exists (delete it first, or leave id out)")
        for i, reply in enumerate(then.respond):
            where = f"body.then.respond[{i}]"
            if when.path == RTVI_PATH:
                if not isinstance(reply.get("type"), str):
                    raise AdminError(422, "bad_request", f"{where}.type: an RTVI message needs a string type")
            else:
                _check_server_message(reply, reply.get("session_id") or when.session_id or "stubbed", where)
        fault = then.fault.model_dump(exclude_none=True) if then.fault is not None else None
        if fault is not None and fault["fault"] == "service_outage" and "service" not in fault:
            raise AdminError(422, "bad_request", "body.then.fault.service: service_outage needs a service "
                             "(stt, llm or tts)")
        pattern = when.model_dump(exclude_none=True)
        if when.message is not None:
            pattern["message"] = when.message  # as given: a null inside it means null
        stub = stubs.add(Stub(body.id or stubs.new_id(), pattern, respond=then.respond, fault=fault,
                              close=(then.close.code, then.close.reason) if then.close is not None else None,
                              delay_s=then.delay_s, pass_through=then.pass_through, priority=body.priority,
                              times=body.times))
        return self._stub_answer(stub)

    def stub(self, stub_id: str) -> StubAnswer:
        stub = self.stubs.get(stub_id)
        if stub is None:
            raise AdminError(404, "not_found", f"unknown stub {stub_id!r}")
        return self._stub_answer(stub)

    def list_stubs(self) -> list[StubAnswer]:
        return [self._stub_answer(stub) for stub in self.stubs]

    def delete_stub(self, stub_id: str) -> StubAnswer:
        answer = self.stub(stub_id)
        self.stubs.remove(stub_id)
        return answer

    def clear_stubs(self) -> int:
        return self.stubs.clear()

    @staticmethod
    def _stub_answer(stub: Stub) -> StubAnswer:
        then: dict[str, Any] = {"respond": stub.respond, "fault": stub.fault, "pass_through": stub.pass_through,
                                "close": {"code": stub.close[0], "reason": stub.close[1]} if stub.close else None,
                                "delay_s": stub.delay_s}
        return StubAnswer(id=stub.id, when=stub.when, then=then, priority=stub.priority, times=stub.times,
                          matched=stub.matched, exhausted=stub.exhausted)

    # Journal queries
    def journal_find(self, query: JournalQuery) -> list[dict[str, Any]]:
        journal = self.server.journal
        if journal is None:
            return []
        pattern = {k: v for k in JOURNAL_FIELDS if (v := getattr(query, k)) is not None}
        limit = query.limit if isinstance(query, JournalFind) else None
        return journal.entries(since=query.since, limit=limit, where=lambda entry: matches(pattern, entry))

    # Reset
    async def reset(self, body: ResetBody | None = None) -> Clock:
        async with self._moving:
            return await self._reset(body or ResetBody())

    async def _reset(self, body: ResetBody) -> Clock:
        model = self.live
        scenario = _scenario_of(body.scenario) if body.scenario is not None else None
        # The server, the RTVI dialect, the stubs and this (_forget_admin) hear of it.
        await model.reset(scenario, seed=body.seed, speed=body.speed)
        return self.clock()

    # Recording
    def recording(self) -> Recording:
        rec = self.server.recorder
        if rec is None:
            return Recording(path=None, recording=False, messages=0, segments=0)
        return Recording(path=str(rec.path), recording=not rec.closed, messages=rec.count, segments=rec.segments)

    def start_recording(self, path: str) -> Recording:
        rec = self.server.recorder
        if rec is not None and not rec.closed:
            raise AdminError(409, "conflict", f"already recording into {rec.path} "
                             "(POST /__admin/recording/stop first)")
        try:
            self.server.start_recording(path)
        except OSError as exc:
            raise AdminError(422, "bad_request", f"body.path: cannot write {path!r}: "
                             f"{exc.strerror or exc}") from None
        return self.recording()

    def stop_recording(self) -> Recording:
        recorder = self.server.stop_recording()
        if recorder is None:
            raise AdminError(409, "conflict", "not recording (POST /__admin/recording/start first)")
        return self.recording()

    def _forget_admin(self, old: Any) -> None:
        """On a reset: what the admin API created is gone with the old model."""
        self.created_by_admin.clear()
        self._push_seq.clear()
        self._admin_ids = itertools.count(1)


def _check_server_message(message: dict[str, Any], sid: str, where: str) -> None:
    """A server message of the protocol as a push or a stub's reply sends it (``session_id``, ``seq`` and
    ``timestamp`` filled in when absent), or 422 naming its field (``where``: the message's own path)."""
    probe = {**filled(message.get("type"), {"session_id": sid, "seq": 0, "timestamp": 0.0}), **message}
    try:
        parse_message(json.dumps(probe), allowed=SERVER_MESSAGE_TYPES)
    except (ProtocolError, TypeError, ValueError) as exc:
        type_name = message.get("type")
        text = str(exc)
        if isinstance(type_name, str):
            text = re.sub(rf"(^|; ){re.escape(type_name)}\.", rf"\1{where}.", text)
        if not text.startswith("body."):
            text = f"{where}: {text}"
        raise AdminError(422, "bad_request", text) from None


def _scenario_of(given: str | dict[str, Any]) -> Scenario:
    """A reset's scenario: a bundled scenario's name, or a mapping validated as a scenario file (422 naming
    the field: ``body.scenario.sessions.turns: ...``)."""
    if isinstance(given, str):
        if given not in bundled_scenarios():
            raise AdminError(422, "bad_request", f"body.scenario: no bundled scenario {given[:80]!r} (bundled: "
                             f"{', '.join(bundled_scenarios())}; or give the scenario itself, as a mapping)")
        return load_scenario(scenario_path(given))
    source = "body.scenario"
    try:
        return validate_scenario(given, source=source)
    except ScenarioError as exc:
        problems = [p.replace(f"{source} (top level)", source, 1).replace(f"{source} ", f"{source}.", 1)
                    for p in exc.problems]
        raise AdminError(422, "bad_request", "; ".join(problems[:5])) from None
