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
from typing import Annotated, Any, Literal, Protocol

import uvicorn
from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipesim import _jsonsafe
from pipesim.errors import LiveError
from pipesim.live.access import Access
from pipesim.live.clock import Clock as ServerClock
from pipesim.live.hub import Hub
from pipesim.live.journal import Journal
from pipesim.live.pacer import Pacer
from pipesim.live.source import LiveModel
from pipesim.protocol import FaultInjection, ProtocolError, json_schemas, parse_message, wire_messages
from pipesim.state import IllegalTransition, Transition, UnknownSession
from pipesim.vocabulary import SERVER_MESSAGE_TYPES, FaultKind, PipelineState, ServiceName, ServiceState, SessionStatus


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
    audio_quality: Annotated[float | None, Field(gt=0.0, lt=1.0, allow_inf_nan=False, description=(
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
    duration_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 5.0
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


#: The tokens of a JSON text that say where a value is: strings, brackets, commas and colons.
_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]')


def _json_path_at(text: str, pos: int) -> str:
    """The field path (``body.messages[0].after_s``) of the value at character ``pos`` of a JSON text, read
    from the text before it (which the decoder took).

    >>> _json_path_at('{"messages": [{"after_s": 1e999}]}', 26)
    'body.messages[0].after_s'
    """
    parts: list[str | int | None] = []  # per open container: the key or index of the value being read
    key: str | None = None
    for match in _JSON_STRUCTURE.finditer(text, 0, pos):
        token = match.group()
        if token in "{[":
            parts.append(0 if token == "[" else None)
        elif token in "}]":
            if parts:
                parts.pop()
        elif token == ",":
            if parts:
                last = parts[-1]
                parts[-1] = last + 1 if isinstance(last, int) else None
        elif token == ":":
            if parts:
                parts[-1] = key
        else:
            try:
                key = json.loads(token)
            except ValueError:
                key = token[1:-1]
    return _field_path(("body", *(p for p in parts if p is not None)))


class _GuardedJSONRequest(Request):
    """A request whose JSON body is read by pipesim's guarded reader: a huge integer or a deep nesting is a
    ``JSONDecodeError`` with its position, which FastAPI answers as any bad JSON (422, naming where), instead
    of the decoder's own error (a 400 that named nothing)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", raw.decode("utf-8", "replace"),
                                           exc.start) from None
            self._json = _jsonsafe.loads(text)
        return self._json


class _GuardedJSONRoute(APIRoute):
    """FastAPI's route, handing its endpoint a :class:`_GuardedJSONRequest` (FastAPI's documented way to
    change how a body is read: a custom ``APIRoute`` class)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await handler(_GuardedJSONRequest(request.scope, request.receive))

        return guarded


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
            raise AdminError(409, "unsupported", f"this server replays {self.server.source}; "
                             "only the clock, seek, the journal and health are available")
        return self.server.model

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
        fields = _filled(out.get("type"), {"seq": 0, "timestamp": 0.0})
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

    # Reset
    async def reset(self) -> Clock:
        async with self._moving:
            return await self._reset()

    async def _reset(self) -> Clock:
        await self.live.reset()  # the server, the RTVI dialect and this (_forget_admin) hear of it
        return self.clock()

    def _forget_admin(self, old: Any) -> None:
        """On a reset: what the admin API created is gone with the old model."""
        self.created_by_admin.clear()
        self._push_seq.clear()
        self._admin_ids = itertools.count(1)


# What each operation answers (the OpenAPI document) ------------------------------------------------------
_CLOCK = {"t": 12.5, "paused": True, "speed": 1.0, "next_event_t": 12.62}
_SESSION = {"session_id": "demo-1", "status": "active", "state": "processing",
            "services": {"stt": "complete", "llm": "executing", "tts": "idle"}, "turn_id": 2, "seq": 41,
            "buffer_size": 0, "audio_quality": 0.82, "created_by": "scenario"}
_UPDATE = {"type": "pipeline_state_update", "session_id": "demo-1", "state": "processing",
           "services": {"stt": "complete", "llm": "executing", "tts": "idle"},
           "metadata": {"buffer_size": 0, "audio_quality": 0.82}, "timestamp": 12.5, "seq": 41}
_MOVED = {"clock": _CLOCK, "transitions": [_UPDATE], "transitions_total": 1, "truncated": False}

#: The errors an operation may answer: why, and an example of the error body's code and message.
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("A Host, Origin or Authorization header given more than once.", "bad_request",
          "more than one Host header"),
    401: ("The server was started with an admin token (--admin-token, $PIPESIM_ADMIN_TOKEN) and the request "
          "did not carry it as Authorization: Bearer TOKEN.", "unauthorized", "wrong admin token"),
    403: ("A Host that is not a loopback name, or an Origin the server does not allow (--allow-origin).",
          "forbidden", "Origin 'http://evil.example' is not allowed"),
    404: ("No session of this id.", "unknown_session", "unknown session 'demo-9'"),
    408: ("The session did not reach the state in time (the body also carries the session and the clock).",
          "timeout", "run-until: session 'demo-1' did not reach {\"services.llm\": \"executing\"} within 60 "
          "simulated s (or 10 wall s)"),
    409: ("Not possible now: a replay cannot change (only the clock, seek, the journal and health are "
          "available), or the control is illegal in the session's state.", "illegal_control",
          "pause: session 'demo-1' is paused"),
    415: ("A body that is not application/json.", "bad_request",
          "the body must be application/json, got 'text/plain'"),
    422: ("A bad body or query parameter: the message names the field (body.messages[1].message.state), or "
          "says the body is not JSON and where.", "bad_request",
          "body.speed: Input should be greater than 0 (got -2)"),
}
#: Every operation may answer these: the access checks come before any handler.
_ACCESS = (400, 401, 403)


def _responses(example: Any, *errors: int, status: int = 200, **why: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of an operation: its answer's example, then each error it may answer (besides the
    access checks every operation has, and 415 for a POST) with why and an example; ``why`` overrides the
    reason (``e404="..."``)."""
    out: dict[int | str, dict[str, Any]] = {status: {"content": {"application/json": {"example": example}}}}
    for code in sorted({*_ACCESS, *errors}):
        reason, error_code, message = _ERRORS[code]
        out[code] = {"model": ErrorBody, "description": why.get(f"e{code}", reason),
                     "content": {"application/json": {"example": {"error": {"code": error_code,
                                                                            "message": message}}}}}
    return out


_NO_SESSION = "No session of this id (on a replay: 409)."
_LIVE_ONLY = "This server replays a recording: only the clock, seek, the journal and health are available."


# The app -------------------------------------------------------------------------------------------
def build_app(server: Served | None = None, *, token: str | None = None) -> FastAPI:
    """The FastAPI app of ``server`` (None: an app for its OpenAPI document only)."""
    app = FastAPI(title="pipesim admin API", version="1", openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description=__doc__.split("\n>>>")[0] if __doc__ else None)
    app.router.route_class = _GuardedJSONRoute
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
        if errs and errs[0].get("type") == "json_invalid" and isinstance(exc.body, str):
            return _error(422, "bad_request", _json_error(exc.body, errs[0]))
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

    @app.get(f"{PREFIX}/health", response_model=Health, responses=_responses(
        {"status": "ok", "kind": "live", "scenario": "frontend_demo", "seed": 1}))
    async def health() -> Health:
        """Whether the server answers, and what it serves: a live model (its scenario and seed) or a replay
        (its file)."""
        s = get_ops().server
        model = s.model
        return Health(kind=s.kind, scenario=model.scenario.name if model is not None else s.source,
                      seed=model.sim.seed if model is not None else None)

    @app.get(f"{PREFIX}/sessions", response_model=SessionList,
             responses=_responses({"sessions": [_SESSION]}, 409, e409=_LIVE_ONLY))
    async def list_sessions() -> SessionList:
        """Every session of the model, as the state manager has it now."""
        return SessionList(sessions=get_ops().sessions())

    @app.post(f"{PREFIX}/sessions", response_model=Session, status_code=201, responses=_responses(
        {**_SESSION, "session_id": "admin-0001", "state": "listening", "created_by": "admin"}, 409, 415, 422,
        status=201, e409="The id is taken (or reserved by the scenario), or this server replays a recording."))
    async def create_session(body: Annotated[CreateSession | None, Body(openapi_examples={
            "generated id": {"value": {}}, "chosen": {"value": {"session_id": "abc", "turns": 2,
                                                               "audio_quality": 0.9, "start": True}}})] = None,
                             ) -> Session:
        """Create a session from the scenario's template (started at once unless ``start`` is false); without a
        ``session_id``, one is made up (``admin-0001``, ...)."""
        return get_ops().create(body or CreateSession())

    @app.get(f"{PREFIX}/sessions/{{session_id}}", response_model=Session,
             responses=_responses(_SESSION, 404, 409, e404=_NO_SESSION, e409=_LIVE_ONLY))
    async def get_session(session_id: str) -> Session:
        """One session, as the state manager has it now."""
        return get_ops().session(session_id)

    def control_endpoint(action: str) -> None:
        async def control(session_id: str) -> Session:
            return get_ops().control(session_id, action)

        status = {"start": "active", "pause": "paused", "stop": "stopped"}[action]
        app.post(f"{PREFIX}/sessions/{{session_id}}/{action}", response_model=Session,
                 name=f"{action}_session", summary=f"{action.title()} a session (as conversation_control)",
                 description=f"{action.title()} the session as a client's conversation_control would; its watchers "
                             "get the same messages. Answers the session as it is then.",
                 responses=_responses({**_SESSION, "status": status}, 404, 409, 415, e404=_NO_SESSION,
                                      e409=f"{action} is illegal in the session's state (e.g. pause a paused "
                                           "session), or this server replays a recording."))(control)

    for action in ("start", "pause", "stop"):
        control_endpoint(action)

    @app.post(f"{PREFIX}/sessions/{{session_id}}/push", response_model=Scheduled, responses=_responses(
        {"scheduled": 2}, 404, 409, 415, 422,
        e404="No session of this id (add ?allow_unknown=true to send to the watchers of an id the model does not "
             "know).", e409=_LIVE_ONLY))
    async def push(session_id: str,
                   body: Annotated[PushBody, Body(openapi_examples={"a stall, then an error 2 s later": {"value": {
                       "messages": [{"message": {"type": "pipeline_state_update", "state": "processing",
                                                 "services": {"stt": "complete", "llm": "waiting", "tts": "idle"},
                                                 "metadata": {"buffer_size": 0, "audio_quality": 0.8},
                                                 "error": "LLM stalled"}},
                                    {"message": {"type": "error", "code": "unsupported",
                                                 "message": "orchestrator crashed"}, "after_s": 2.0}]}}})],
                   allow_unknown: Annotated[bool, Query(description=(
                       "Send even when the model knows no session of this id (to the clients watching it); "
                       "without it, an unknown id is 404 as on every other /sessions/{session_id} path."))] = False,
                   ) -> Scheduled:
        """Send protocol messages to the session's watchers, validated as the server's own; ``session_id``,
        ``seq`` and ``timestamp`` are filled in when absent. ``after_s`` waits on the simulated clock (a paused
        clock holds the message)."""
        return get_ops().push(session_id, body, allow_unknown)

    @app.get(f"{PREFIX}/clock", response_model=Clock, responses=_responses(_CLOCK))
    async def clock() -> Clock:
        """The clock: simulated time ``t``, paused or not, speed, and when the next model event is due."""
        return get_ops().clock()

    @app.post(f"{PREFIX}/clock/pause", response_model=Clock, responses=_responses(_CLOCK, 415))
    async def pause() -> Clock:
        """Pause the clock: nothing moves (clients' controls are still answered, at the paused time)."""
        return get_ops().pause()

    @app.post(f"{PREFIX}/clock/resume", response_model=Clock,
              responses=_responses({**_CLOCK, "paused": False}, 415))
    async def resume() -> Clock:
        """Resume the clock from where it was paused (no jump)."""
        return get_ops().resume()

    @app.post(f"{PREFIX}/clock/speed", response_model=Clock,
              responses=_responses({**_CLOCK, "speed": 10.0}, 415, 422))
    async def speed(body: Annotated[SpeedBody, Body(openapi_examples={"ten times": {"value": {"speed": 10}}})],
                    ) -> Clock:
        """Run at ``speed`` simulated seconds per wall second from now on (no jump in simulated time)."""
        return get_ops().set_speed(body.speed)

    @app.post(f"{PREFIX}/clock/step", response_model=ClockMoved,
              responses=_responses(_MOVED, 409, 415, 422, e409=_LIVE_ONLY))
    async def step(body: Annotated[StepBody | None, Body(openapi_examples={
            "three transitions": {"value": {"count": 3}}})] = None) -> ClockMoved:
        """Run the model to its next ``count`` state transitions, then pause; the answer lists the first
        ``limit`` of them."""
        body = body or StepBody()
        return await get_ops().step(body.count, body.limit)

    @app.post(f"{PREFIX}/clock/advance", response_model=ClockMoved,
              responses=_responses(_MOVED, 409, 415, 422, e409=_LIVE_ONLY))
    async def advance(body: Annotated[AdvanceBody, Body(openapi_examples={
            "2.5 s": {"value": {"seconds": 2.5}}})]) -> ClockMoved:
        """Move simulated time by exactly ``seconds``, as fast as the model goes, then pause; the answer lists
        the first ``limit`` transitions passed and counts them all."""
        return await get_ops().advance(body.seconds, body.limit)

    @app.post(f"{PREFIX}/clock/run-until", response_model=RunUntilResult, responses=_responses(
        {"clock": _CLOCK, "session": _SESSION, "reached": True}, 404, 408, 409, 415, 422,
        e404="No session of this id, and the scenario will not create one.", e409=_LIVE_ONLY))
    async def run_until(body: Annotated[RunUntilBody, Body(openapi_examples={"LLM executing": {"value": {
            "session_id": "demo-1", "until": {"services.llm": "executing"}}}})]) -> RunUntilResult:
        """Run as fast as possible until the session matches every field of ``until``; the clock is left paused
        at that transition."""
        return await get_ops().run_until(body)

    @app.post(f"{PREFIX}/faults", response_model=FaultApplied, responses=_responses(
        {"applied": {"fault": "kafka_stall", "session_id": None, "from_t": 12.5, "service": "llm",
                     "duration_s": 4.0, "until_t": 16.5}}, 404, 409, 415, 422,
        e404="A disconnect of a session the model does not know.", e409=_LIVE_ONLY))
    async def faults(body: Annotated[FaultBody, Body(openapi_examples={"a 4 s Kafka stall of the LLM": {"value": {
            "fault": "kafka_stall", "service": "llm", "duration_s": 4}}})]) -> FaultApplied:
        """Inject a fault as a client's fault_injection would; the answer says what was applied and its window
        in simulated time."""
        return get_ops().fault(body)

    @app.get(f"{PREFIX}/journal", response_model=JournalEntries, responses=_responses(
        {"entries": [{"id": 7, "wall_time": "2026-01-05T10:00:00.125000+00:00", "t": 12.5, "direction": "in",
                      "connection": "c1", "session_id": "demo-1", "type": "conversation_control",
                      "message": {"type": "conversation_control", "action": "pause", "session_id": "demo-1"},
                      "result": "applied"}], "last_id": 9}, 422))
    async def journal(session_id: str | None = None, type: str | None = None,  # noqa: A002 (the field's name)
                      direction: Literal["in", "out"] | None = None,
                      since: Annotated[int | None, Query(ge=0, description=(
                          "An entry id: only the entries made after it (ids grow and survive clear and reset, "
                          "so a test reads what happened since its mark without clearing the journal)."))] = None,
                      limit: Annotated[int | None, Query(ge=0, le=1_000_000, description=(
                          "Only the newest `limit` of the matching entries."))] = None) -> JournalEntries:
        """What clients sent (with its result) and got, oldest first, filtered; ``last_id`` is the newest
        entry's id, to pass as ``since`` later."""
        j = get_ops().server.journal
        if j is None:
            return JournalEntries(entries=[], last_id=0)
        return JournalEntries(entries=j.entries(session_id=session_id, type=type, direction=direction,
                                                since=since, limit=limit), last_id=j.last_id)

    @app.delete(f"{PREFIX}/journal", response_model=Cleared, responses=_responses({"cleared": 120}))
    async def clear_journal() -> Cleared:
        """Forget every entry of the journal (ids go on counting)."""
        j = get_ops().server.journal
        return Cleared(cleared=j.clear() if j is not None else 0)

    @app.post(f"{PREFIX}/reset", response_model=Clock,
              responses=_responses({**_CLOCK, "t": 0.0, "next_event_t": 0.0}, 409, 415, e409=_LIVE_ONLY))
    async def reset() -> Clock:
        """Back to the scenario's start, same seed: watchers get session_ended (reason reset) for the old
        sessions, the journal is cleared, and a recording starts a new segment."""
        return await get_ops().reset()

    @app.post(f"{PREFIX}/replay/seek", response_model=Clock, responses=_responses(
        {**_CLOCK, "t": 50.5}, 409, 415, 422, e409="Only a replay can seek; a live model moves forward."))
    async def seek(body: Annotated[SeekBody, Body(openapi_examples={"to 50.5 s": {"value": {"t": 50.5}}})]) -> Clock:
        """``pipesim replay`` only: jump to simulated time ``t``; watchers get each session's state as of ``t``."""
        return get_ops().seek(body.t)

    base_openapi = app.openapi

    def openapi_with_security() -> dict[str, Any]:
        doc = base_openapi()
        # FastAPI documents a 422 of its own (HTTPValidationError) on every operation with a parameter: a path's
        # session_id cannot fail, and our 422 is an ErrorBody, documented where it can happen.
        for item in doc["paths"].values():
            for operation in item.values():
                fastapi_422 = operation["responses"].get("422", {})
                if "HTTPValidationError" in json.dumps(fastapi_422):
                    del operation["responses"]["422"]
        for unused in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(unused, None)
        # Declared, not enforced here: the guard above checks the token (only when the server has one).
        doc.setdefault("components", {}).setdefault("securitySchemes", {"adminToken": {
            "type": "http", "scheme": "bearer", "description": "Needed only when the server was started with "
            "--admin-token TOKEN (or $PIPESIM_ADMIN_TOKEN): Authorization: Bearer TOKEN."}})
        doc["security"] = [{"adminToken": []}, {}]
        return doc

    app.openapi = openapi_with_security  # type: ignore[method-assign]

    return app


def _filled(type_name: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The ``values`` whose fields the message type has (an ``error`` has no seq nor timestamp)."""
    fields = _FIELDS.get(type_name) if isinstance(type_name, str) else None
    return {k: v for k, v in values.items() if fields is None or k in fields}


_FIELDS = {name: set(schema.get("properties", {})) for name, schema in json_schemas().items()}


def _json_error(text: str, err: dict[str, Any]) -> str:
    """The one line for a body FastAPI could not decode: the field where it failed, else that it is not JSON."""
    loc = err.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    reason = str((err.get("ctx") or {}).get("error", "not JSON"))
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    where = _json_path_at(text, pos)
    if where == "body":
        return f"body: not JSON: {reason} (line {line} column {column})"
    return f"{where[:200]}: {reason} (line {line} column {column} of the body)"


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

    def __init__(self, server: Served, port: int, token: str | None = None) -> None:
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

