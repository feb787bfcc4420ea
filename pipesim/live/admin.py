"""The admin API: drive a live (or replay) server from a test, over JSON and HTTP (``/__admin``).

A FastAPI app served by uvicorn on its own listener, in the same process and event loop as the
WebSocket server (the ``websockets`` library parses only GET handshakes, so the protocol side stays as it
is). Every handler is a coroutine on that loop, so it touches the model exactly as a WebSocket control
does, with no lock. ``pipesim schema --format openapi`` prints its OpenAPI document.

What it offers (WireMock's ``/__admin`` convention): sessions (list, get, create from the scenario's
template, start/pause/stop), the clock (pause, resume, speed, step N transitions, advance N simulated
seconds, run until a session reaches a state), faults with an acknowledgement, push of protocol messages
to a session's watchers, the message journal, and reset to the scenario's start.

Who may use it: it can freeze, reset and rewrite everything, so it listens on ``127.0.0.1`` only (even
when the WebSocket side listens on every address), answers only requests whose ``Host`` is a loopback
name (no DNS rebinding), refuses requests that carry an ``Origin`` the WebSocket side would refuse (a web
page cannot drive it by accident), refuses POST bodies that are not ``application/json`` (no form
posts from other sites), and with a token (``--admin-token``, ``$PIPESIM_ADMIN_TOKEN``) requires
``Authorization: Bearer TOKEN`` (compared in constant time, never logged).

Every error is ``{"error": {"code": ..., "message": ...}}``.

>>> app = build_app()
>>> sorted(app.openapi()["paths"])[:3]
['/__admin/clock', '/__admin/clock/advance', '/__admin/clock/pause']
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import re
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import uvicorn
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipesim.errors import LiveError
from pipesim.live.access import Access
from pipesim.live.pacer import Pacer
from pipesim.protocol import FaultInjection, ProtocolError, json_schemas, parse_message, wire_messages
from pipesim.state import IllegalTransition, Transition, UnknownSession
from pipesim.vocabulary import SERVER_MESSAGE_TYPES, FaultKind, PipelineState, ServiceName, ServiceState, SessionStatus

if TYPE_CHECKING:
    from pipesim.live.server import LiveServer, _BaseServer

PREFIX = "/__admin"
ADMIN_HOST = "127.0.0.1"


# Models ----------------------------------------------------------------------------------------------
class _Body(BaseModel):
    # A misspelt option must not be ignored silently: a test would assert against the wrong setup.
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="unknown_session, illegal_control, bad_request, forbidden, unauthorized, "
                                  "unsupported, timeout, not_found, ...")
    message: str = Field(description="One line naming what is wrong.")


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    kind: Literal["live", "replay"]
    scenario: str | None
    seed: int | None


class ServicesModel(BaseModel):
    stt: ServiceState
    llm: ServiceState
    tts: ServiceState


class Session(BaseModel):
    """A session as the state manager has it now."""

    session_id: str
    status: SessionStatus
    state: PipelineState
    services: ServicesModel
    turn_id: int
    seq: int = Field(description="The seq of the last message sent about the session.")
    buffer_size: int
    audio_quality: float
    created_by: Literal["scenario", "client", "admin"]


class SessionList(BaseModel):
    sessions: list[Session]


class CreateSession(_Body):
    session_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    turns: Annotated[int | None, Field(ge=1, le=10_000, description="User turns before the user hangs up.")] = None
    audio_quality: Annotated[float | None, Field(gt=0.0, lt=1.0, description=(
        "The user's typical audio quality (0..1, exclusive): sets their microphone's SNR level.")) ] = None
    start: bool = True


class Clock(BaseModel):
    t: float = Field(description="Simulated seconds.")
    paused: bool
    speed: float
    next_event_t: float | None


class SpeedBody(_Body):
    speed: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


#: Most transitions a clock move's answer lists by default (an hour of a busy model is millions of them).
LISTED_TRANSITIONS = 1_000
_Listed = Annotated[int, Field(ge=0, le=100_000, description="Most transitions the answer lists (the first ones); "
                               "transitions_total counts them all.")]


class StepBody(_Body):
    count: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    limit: _Listed = LISTED_TRANSITIONS


class AdvanceBody(_Body):
    seconds: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)]
    limit: _Listed = LISTED_TRANSITIONS


class ClockMoved(BaseModel):
    clock: Clock
    transitions: list[dict[str, Any]] = Field(description="The wire messages of the first `limit` transitions "
                                              "passed, in order.")
    transitions_total: int = Field(description="How many transitions the clock passed.")
    truncated: bool = Field(description="True when transitions lists fewer than transitions_total.")


class Until(_Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    status: SessionStatus | None = None
    state: PipelineState | None = None
    stt: Annotated[ServiceState | None, Field(alias="services.stt")] = None
    llm: Annotated[ServiceState | None, Field(alias="services.llm")] = None
    tts: Annotated[ServiceState | None, Field(alias="services.tts")] = None

    def wanted(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class RunUntilBody(_Body):
    session_id: Annotated[str, Field(min_length=1, max_length=200)]
    until: Until
    timeout_s: Annotated[float, Field(gt=0, le=1e7, allow_inf_nan=False, description="Simulated seconds.")] = 60.0
    wall_timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0


class RunUntilResult(BaseModel):
    clock: Clock
    session: Session
    reached: bool


class FaultBody(_Body):
    fault: FaultKind
    service: ServiceName | None = None
    duration_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    session_id: str | None = None


class FaultApplied(BaseModel):
    applied: dict[str, Any] = Field(description="What was applied, with from_t and until_t (simulated).")


class PushItem(_Body):
    message: dict[str, Any] = Field(description="A server message of the protocol; session_id, seq and "
                                                "timestamp are filled in when absent.")
    after_s: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)] = 0.0


class PushBody(_Body):
    messages: Annotated[list[PushItem], Field(min_length=1, max_length=10_000)]


class Scheduled(BaseModel):
    scheduled: int


class JournalEntry(BaseModel):
    id: int
    wall_time: str
    t: float
    direction: Literal["in", "out"]
    connection: str | None
    session_id: str | None
    type: str | None
    message: dict[str, Any]
    result: Any = Field(description='Inbound only: "applied" or {"error": {code, message}}.')


class JournalEntries(BaseModel):
    entries: list[JournalEntry]
    last_id: int = Field(description="The id of the newest entry of the journal, whatever the filters (0 when "
                                     "none was ever made): pass it as `since` to read only what comes next.")


class Cleared(BaseModel):
    cleared: int


class SeekBody(_Body):
    t: Annotated[float, Field(allow_inf_nan=False)]


class AdminError(Exception):
    """An admin request that cannot be honoured: answered with ``status`` and the error body."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status)


def _field_path(loc: tuple[Any, ...]) -> str:
    """``body.messages[1].message.state``; a key that is not a plain name is quoted (``until["\\n"]``), so the
    path stays on one line whatever a client sends."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isidentifier():
            out += f"[{json.dumps(str(part))[:80]}]"
        else:
            out += f".{part}" if out else str(part)
    return out


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


class _Ops:
    """What the endpoints do to a server (the one place that knows the server's insides)."""

    def __init__(self, server: _BaseServer) -> None:
        self.server = server
        self._admin_ids = itertools.count(1)
        self.created_by_admin: set[str] = set()
        self._push_seq: dict[str, int] = {}  # next seq of sessions the model does not know
        # One clock-moving request at a time: a second step/advance/run-until/reset waits for the first.
        self._moving = asyncio.Lock()

    # Shared helpers
    @property
    def live(self) -> LiveServer:
        if self.server.kind != "live":
            raise AdminError(409, "unsupported", f"this server replays {getattr(self.server, 'source', '?')}; "
                             "only the clock, seek, the journal and health are available")
        return self.server

    def clock(self) -> Clock:
        s = self.server
        if s.kind == "live":
            return Clock(t=s.pacer.now(), paused=s.pacer.paused, speed=s.pacer.speed,
                         next_event_t=s.pacer.next_event_t)
        return Clock(**s.clock())

    def session(self, sid: str) -> Session:
        server = self.live
        mgr = server.sim.manager
        if sid not in mgr:
            raise AdminError(404, "unknown_session", f"unknown session {sid!r}")
        snap = mgr.snapshot(sid, server.pacer.now())
        stopped = snap.status == "stopped"
        if server.sim._reserved(sid) is not None:
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
        server = self.live
        sid = body.session_id
        while sid is None or (body.session_id is None and sid in server.sim.manager):
            sid = f"admin-{next(self._admin_ids):04d}"
        with server.pacer.applying():
            try:
                server.sim.add_session(sid, turns=body.turns, audio_quality=body.audio_quality, start=body.start)
            except IllegalTransition as exc:
                raise AdminError(409, "illegal_control", f"create: {exc}") from None
        self.created_by_admin.add(sid)
        return self.session(sid)

    def control(self, sid: str, action: str) -> Session:
        server = self.live
        if sid not in server.sim.manager:
            raise AdminError(404, "unknown_session", f"{action}: unknown session {sid!r} "
                             "(create it with POST /__admin/sessions)")
        with server.pacer.applying():
            try:
                server.sim.control(sid, action)
            except UnknownSession:
                raise AdminError(404, "unknown_session", f"{action}: unknown session {sid!r}") from None
            except IllegalTransition as exc:
                raise AdminError(409, "illegal_control", f"{action}: {exc}") from None
        return self.session(sid)

    # Clock
    def pause(self) -> Clock:
        s = self.server
        if s.kind == "live":
            s.pacer.pause()
        else:
            self._replay_call("pause")
        return self.clock()

    def resume(self) -> Clock:
        s = self.server
        if s.kind == "live":
            s.pacer.resume()
        else:
            self._replay_call("resume")
        return self.clock()

    def set_speed(self, speed: float) -> Clock:
        s = self.server
        if s.kind == "live":
            s.pacer.set_speed(speed)
        else:
            self._replay_call("set_speed", speed)
        return self.clock()

    def seek(self, t: float) -> Clock:
        if self.server.kind == "live":
            raise AdminError(409, "unsupported", "seek: only a replay can seek; a live model moves forward "
                             "(use clock/advance or reset)")
        self._replay_call("seek", t)
        return self.clock()

    def _replay_call(self, name: str, *args: Any) -> None:
        getattr(self.server, name)(*args)

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
        server = self.live
        sid, wanted = body.session_id, body.until.wanted()
        if not wanted:
            raise AdminError(422, "bad_request", "body.until: name at least one of status, state, "
                             "services.stt, services.llm, services.tts")
        if sid not in server.sim.manager and server.sim._reserved(sid) is None:
            raise AdminError(404, "unknown_session", f"run-until: unknown session {sid!r} (and the scenario "
                             "will not create it)")

        def matches(tr: Transition) -> bool:
            return tr.session_id == sid and all(getattr(tr, k) == v for k, v in wanted.items())

        pacer = server.pacer
        pacer.pause()
        reached = sid in server.sim.manager and matches(server.sim.manager.snapshot(sid, pacer.now()))
        if not reached:
            async with self._moving:
                reached = await self._run_until(pacer, matches, body)
        if not reached:
            where = self.session(sid).model_dump() if sid in server.sim.manager else None
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
        server = self.live
        # The same validation as the WebSocket fault_injection (one source of truth for the fields).
        msg = FaultInjection.model_validate({"type": "fault_injection", **body.model_dump(exclude_none=True)})
        with server.pacer.applying() as now:
            applied: dict[str, Any] = {"fault": msg.fault, "session_id": msg.session_id, "from_t": now}
            if msg.fault == "disconnect":
                sid = msg.session_id
                if sid is not None and sid not in server.sim.manager:
                    raise AdminError(404, "unknown_session", f"disconnect: unknown session {sid!r}")
                targets = [c for c in list(server._clients) if sid is None or sid in c.watched]
                for target in targets:
                    server._drop(target, 4000, "fault injection: disconnect")
                return FaultApplied(applied={**applied, "until_t": now, "disconnected": len(targets)})
            try:
                server.sim.inject_fault(msg.fault, msg.service, msg.duration_s)
            except ValueError as exc:
                raise AdminError(422, "bad_request", f"body: {exc}") from None
            return FaultApplied(applied={**applied, "service": msg.service, "duration_s": msg.duration_s,
                                         "until_t": now + msg.duration_s})

    def push(self, sid: str, body: PushBody, allow_unknown: bool = False) -> Scheduled:
        server = self.live
        if not allow_unknown and sid not in server.sim.manager:
            # As every other /sessions/{id}/... does: a misspelt id must not go unnoticed.
            raise AdminError(404, "unknown_session", f"push: unknown session {sid!r} (add ?allow_unknown=true "
                             "to send to the watchers of an id the model does not know)")
        checked: list[tuple[float, dict[str, Any]]] = []
        for i, item in enumerate(body.messages):
            message = dict(item.message)
            if message.get("session_id", sid) != sid:
                raise AdminError(422, "bad_request", f"body.messages[{i}].message.session_id: "
                                 f"{message['session_id']!r} is not the session of the path, {sid!r}")
            probe = {**_filled(message.get("type"), {"session_id": sid, "seq": 0, "timestamp": 0.0}), **message}
            try:
                parse_message(json.dumps(probe), allowed=SERVER_MESSAGE_TYPES)
            except (ProtocolError, TypeError, ValueError) as exc:
                type_name = message.get("type")
                text = str(exc)
                if isinstance(type_name, str):
                    text = re.sub(rf"(^|; ){re.escape(type_name)}\.", rf"\1body.messages[{i}].message.", text)
                if not text.startswith("body."):
                    text = f"body.messages[{i}].message: {text}"
                raise AdminError(422, "bad_request", text) from None
            checked.append((item.after_s, message))
        env = server.sim.env
        for after_s, message in checked:
            if after_s == 0:
                self._deliver(sid, message)
            else:  # a SimPy timeout: a paused clock holds it, step/advance release it on time
                event = env.timeout(after_s)
                event.callbacks.append(lambda _e, m=message: self._deliver(sid, m))
        server.pacer.wake()
        return Scheduled(scheduled=len(checked))

    def _deliver(self, sid: str, message: dict[str, Any]) -> None:
        server = self.live
        now = server.sim.env.now
        out = {**message, "session_id": sid}
        fields = _filled(out.get("type"), {"seq": 0, "timestamp": 0.0})
        if "seq" in fields and "seq" not in out:
            mgr = server.sim.manager
            if sid in mgr:
                out["seq"] = mgr.reserve_seq(sid)
            else:
                out["seq"] = self._push_seq.get(sid, 0)
                self._push_seq[sid] = out["seq"] + 1
        if "timestamp" in fields:
            out.setdefault("timestamp", now)
        server._broadcast(sid, out, now)

    # Reset
    async def reset(self) -> Clock:
        async with self._moving:
            return await self._reset()

    async def _reset(self) -> Clock:
        server = self.live
        paused, speed, batch = server.pacer.paused, server.pacer.speed, server.pacer.batch
        await server._on_stop()  # the pacer stops and the server no longer hears the old model
        old = server.sim
        now = old.env.now
        # The old model's sessions vanish: tell their watchers as a stop would.
        for sid in old.manager.session_ids:
            if old.manager.status(sid) != "stopped":
                snap = old.manager.snapshot(sid, now)
                server._broadcast(sid, {"type": "session_ended", "session_id": sid, "timestamp": now,
                                        "seq": snap.seq + 1, "reason": "reset"}, now)
        if server.journal is not None:
            server.journal.clear()
        if server.recorder is not None:  # the new model's time starts at 0 again: a new segment keeps it replayable
            server.recorder.new_segment("reset")
        self.created_by_admin.clear()
        self._push_seq.clear()
        self._admin_ids = itertools.count(1)
        server.drop_rtvi("reset")
        server.sim = server.new_model(old.seed)
        server.pacer = Pacer(server.sim.env, speed, batch=batch)
        server.pacer.paused = paused
        server._on_start()  # the scenario's own sessions at t = 0, broadcast as on a fresh start
        return self.clock()


# The app -------------------------------------------------------------------------------------------
def build_app(server: _BaseServer | None = None, *, token: str | None = None) -> FastAPI:
    """The FastAPI app of ``server`` (None: an app for its OpenAPI document only)."""
    app = FastAPI(title="pipesim admin API", version="1", openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description=__doc__.split("\n>>>")[0] if __doc__ else None,
                  responses={code: {"model": ErrorBody} for code in (401, 403, 404, 409, 415, 422)})
    ops = _Ops(server) if server is not None else None
    access = Access.build(ADMIN_HOST, server.access.allow_origins if server is not None else ())
    token = token or None

    def get_ops() -> _Ops:
        if ops is None:
            raise AdminError(503, "unsupported", "no server behind this app")
        return ops

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        headers = request.headers
        for name in ("host", "origin", "authorization"):
            if len(headers.getlist(name)) > 1:
                return _error(400, "bad_request", f"more than one {name.title()} header")
        refusal = access.refusal({k: v for k, v in (("Host", headers.get("host")),
                                                    ("Origin", headers.get("origin"))) if v is not None}, {})
        if refusal is not None:
            return _error(403, "forbidden", refusal.replace("--allow-host", "the admin API answers loopback "
                                                            "names only"))
        if token is not None:
            scheme, _, given = (headers.get("authorization") or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return _error(401, "unauthorized", "this admin API needs a token: Authorization: Bearer TOKEN")
            if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode()):
                return _error(401, "unauthorized", "wrong admin token")
        if request.method in ("POST", "PUT", "PATCH") and _has_body(request):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return _error(415, "bad_request", f"the body must be application/json, got {ctype or 'none'!r}")
        return await call_next(request)

    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        parts = []
        for err in errs[:5]:
            where = _field_path(tuple(err.get("loc", ())))
            value = err.get("input")
            shown = f" (got {json.dumps(value)[:80]})" if err.get("type") != "missing" and _jsonable(value) else ""
            parts.append(f"{where}: {err.get('msg', 'invalid')}{shown}")
        return _error(422, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = f"no admin endpoint {request.method} {request.url.path}" if exc.status_code in (404, 405) \
            else str(exc.detail)
        return _error(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:  # a pipesim bug: say so, keep serving
        return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")

    @app.get(f"{PREFIX}/health", response_model=Health)
    async def health() -> Health:
        s = get_ops().server
        scenario = getattr(s, "scenario", None)
        sim = getattr(s, "sim", None)
        return Health(kind=s.kind,
                      scenario=scenario.name if scenario is not None else getattr(s, "source", None),
                      seed=sim.seed if sim is not None else None)

    @app.get(f"{PREFIX}/sessions", response_model=SessionList)
    async def list_sessions() -> SessionList:
        return SessionList(sessions=get_ops().sessions())

    @app.post(f"{PREFIX}/sessions", response_model=Session, status_code=201)
    async def create_session(body: Annotated[CreateSession | None, Body()] = None) -> Session:
        return get_ops().create(body or CreateSession())

    @app.get(f"{PREFIX}/sessions/{{session_id}}", response_model=Session)
    async def get_session(session_id: str) -> Session:
        return get_ops().session(session_id)

    def control_endpoint(action: str) -> None:
        async def control(session_id: str) -> Session:
            return get_ops().control(session_id, action)

        app.post(f"{PREFIX}/sessions/{{session_id}}/{action}", response_model=Session,
                 name=f"{action}_session", summary=f"{action.title()} a session (as conversation_control)")(control)

    for action in ("start", "pause", "stop"):
        control_endpoint(action)

    @app.post(f"{PREFIX}/sessions/{{session_id}}/push", response_model=Scheduled)
    async def push(session_id: str, body: PushBody,
                   allow_unknown: Annotated[bool, Query(description=(
                       "Send even when the model knows no session of this id (to the clients watching it); "
                       "without it, an unknown id is 404 as on every other /sessions/{session_id} path."))] = False,
                   ) -> Scheduled:
        return get_ops().push(session_id, body, allow_unknown)

    @app.get(f"{PREFIX}/clock", response_model=Clock)
    async def clock() -> Clock:
        return get_ops().clock()

    @app.post(f"{PREFIX}/clock/pause", response_model=Clock)
    async def pause() -> Clock:
        return get_ops().pause()

    @app.post(f"{PREFIX}/clock/resume", response_model=Clock)
    async def resume() -> Clock:
        return get_ops().resume()

    @app.post(f"{PREFIX}/clock/speed", response_model=Clock)
    async def speed(body: SpeedBody) -> Clock:
        return get_ops().set_speed(body.speed)

    @app.post(f"{PREFIX}/clock/step", response_model=ClockMoved)
    async def step(body: Annotated[StepBody | None, Body()] = None) -> ClockMoved:
        body = body or StepBody()
        return await get_ops().step(body.count, body.limit)

    @app.post(f"{PREFIX}/clock/advance", response_model=ClockMoved)
    async def advance(body: AdvanceBody) -> ClockMoved:
        return await get_ops().advance(body.seconds, body.limit)

    @app.post(f"{PREFIX}/clock/run-until", response_model=RunUntilResult, responses={408: {"model": ErrorBody}})
    async def run_until(body: RunUntilBody) -> RunUntilResult:
        return await get_ops().run_until(body)

    @app.post(f"{PREFIX}/faults", response_model=FaultApplied)
    async def faults(body: FaultBody) -> FaultApplied:
        return get_ops().fault(body)

    @app.get(f"{PREFIX}/journal", response_model=JournalEntries)
    async def journal(session_id: str | None = None, type: str | None = None,  # noqa: A002 (the field's name)
                      direction: Literal["in", "out"] | None = None,
                      since: Annotated[int | None, Query(ge=0, description=(
                          "An entry id: only the entries made after it (ids grow and survive clear and reset, "
                          "so a test reads what happened since its mark without clearing the journal)."))] = None,
                      limit: Annotated[int | None, Query(ge=0, le=1_000_000, description=(
                          "Only the newest `limit` of the matching entries."))] = None) -> JournalEntries:
        j = get_ops().server.journal
        if j is None:
            return JournalEntries(entries=[], last_id=0)
        return JournalEntries(entries=j.entries(session_id=session_id, type=type, direction=direction,
                                                since=since, limit=limit), last_id=j.last_id)

    @app.delete(f"{PREFIX}/journal", response_model=Cleared)
    async def clear_journal() -> Cleared:
        j = get_ops().server.journal
        return Cleared(cleared=j.clear() if j is not None else 0)

    @app.post(f"{PREFIX}/reset", response_model=Clock)
    async def reset() -> Clock:
        return await get_ops().reset()

    @app.post(f"{PREFIX}/replay/seek", response_model=Clock)
    async def seek(body: SeekBody) -> Clock:
        return get_ops().seek(body.t)

    return app


def _filled(type_name: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The ``values`` whose fields the message type has (an ``error`` has no seq nor timestamp)."""
    fields = _FIELDS.get(type_name) if isinstance(type_name, str) else None
    return {k: v for k, v in values.items() if fields is None or k in fields}


_FIELDS = {name: set(schema.get("properties", {})) for name, schema in json_schemas().items()}


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in request.headers


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def openapi() -> dict[str, Any]:
    """The admin API's OpenAPI document (what ``pipesim schema --format openapi`` prints).

    >>> openapi()["info"]["title"]
    'pipesim admin API'
    """
    return build_app().openapi()


# Serving ---------------------------------------------------------------------------------------------
class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: it must not take SIGINT/SIGTERM from ``pipesim serve``.

    ``Server.serve()`` wraps the run in ``capture_signals()``, which replaces the process's handlers with
    its own until it returns (uvicorn 0.29+); the way uvicorn's maintainers point to for embedding is to
    override it (encode/uvicorn#526). The host program stops us by setting ``should_exit``.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AdminListener:
    """The admin API of one server on ``127.0.0.1:port`` (``0``: a free port, then in :attr:`port`)."""

    def __init__(self, server: _BaseServer, port: int, token: str | None = None) -> None:
        self.server, self.port, self.token = server, port, token or None
        self._uvicorn: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        """Take the port now (so that a busy port is one clear error before anything starts)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ADMIN_HOST, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise LiveError(f"cannot listen on {ADMIN_HOST}:{self.port} for the admin API: {reason} "
                            "(choose another --admin-port, or --no-admin)") from None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]

    async def start(self) -> None:
        if self._sock is None:
            self.bind()
        # log_config=None: uvicorn leaves the process's logging as pipesim set it (its warnings then read like
        # pipesim's own); no access log, so no request line (nor token) is ever written.
        config = uvicorn.Config(build_app(self.server, token=self.token), log_config=None, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1, server_header=False)
        self._uvicorn = _EmbeddedServer(config)
        self._task = asyncio.ensure_future(self._uvicorn.serve(sockets=[self._sock]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise LiveError("the admin API did not start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def url(self) -> str:
        return f"http://{ADMIN_HOST}:{self.port}{PREFIX}"

