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
import json
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import uvicorn
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipesim.errors import LiveError
from pipesim.live.access import Access, bearer, same_token
from pipesim.live.admin_models import (
    EXAMPLE_CLOCK,
    EXAMPLE_MOVED,
    EXAMPLE_SESSION,
    LIVE_ONLY,
    NO_SESSION,
    AdminError,
    AdvanceBody,
    Cleared,
    Clock,
    ClockMoved,
    CreateSession,
    ErrorBody,
    FaultApplied,
    FaultBody,
    GuardedJSONRoute,
    Health,
    JournalEntries,
    PushBody,
    RunUntilBody,
    RunUntilResult,
    Scheduled,
    SeekBody,
    Session,
    SessionList,
    SpeedBody,
    StepBody,
    error_response,
    field_path,
    json_error,
    responses_of,
)
from pipesim.live.admin_ops import Operations, Served

if TYPE_CHECKING:
    from pipesim.live.tls import Tls

__all__ = ["ADMIN_HOST", "PREFIX", "AdminError", "AdminListener", "Clock", "ErrorBody", "Served", "build_app",
           "openapi"]

PREFIX = "/__admin"
ADMIN_HOST = "127.0.0.1"


# The app -------------------------------------------------------------------------------------------
def build_app(server: Served | None = None, *, token: str | None = None) -> FastAPI:
    """The FastAPI app of ``server`` (None: an app for its OpenAPI document only)."""
    app = FastAPI(title="pipesim admin API", version="1", openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description=__doc__.split("\n>>>")[0] if __doc__ else None)
    app.router.route_class = GuardedJSONRoute
    ops = Operations(server) if server is not None else None
    access = Access.build(ADMIN_HOST, server.access.allow_origins if server is not None else ())
    token = token or None

    def get_ops() -> Operations:
        if ops is None:
            raise AdminError(503, "unsupported", "no server behind this app")
        return ops

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        headers = request.headers
        for name in ("host", "origin", "authorization"):
            if len(headers.getlist(name)) > 1:
                return error_response(400, "bad_request", f"more than one {name.title()} header")
        refusal = access.refusal({k: v for k, v in (("Host", headers.get("host")),
                                                    ("Origin", headers.get("origin"))) if v is not None}, {})
        if refusal is not None:
            return error_response(403, "forbidden", refusal.replace("--allow-host", "the admin API answers loopback "
                                                            "names only"))
        if token is not None:
            given = bearer(headers.get("authorization"))
            if given is None:
                return error_response(401, "unauthorized", "this admin API needs a token: Authorization: Bearer TOKEN")
            if not same_token(given, token):
                return error_response(401, "unauthorized", "wrong admin token")
        if request.method in ("POST", "PUT", "PATCH") and _has_body(request):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return error_response(415, "bad_request", f"the body must be application/json, got {ctype or 'none'!r}")
        return await call_next(request)

    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if errs and errs[0].get("type") == "json_invalid" and isinstance(exc.body, str):
            return error_response(422, "bad_request", json_error(exc.body, errs[0]))
        parts = []
        for err in errs[:5]:
            where = field_path(tuple(err.get("loc", ())))
            value = err.get("input")
            shown = f" (got {json.dumps(value)[:80]})" if err.get("type") != "missing" and _jsonable(value) else ""
            parts.append(f"{where}: {err.get('msg', 'invalid')}{shown}")
        return error_response(422, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = f"no admin endpoint {request.method} {request.url.path}" if exc.status_code in (404, 405) \
            else str(exc.detail)
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:  # a pipesim bug: say so, keep serving
        return error_response(500, "internal", f"internal error: {type(exc).__name__}: {exc}")

    @app.get(f"{PREFIX}/health", response_model=Health, responses=responses_of(
        {"status": "ok", "kind": "live", "scenario": "frontend_demo", "seed": 1}))
    async def health() -> Health:
        """Whether the server answers, and what it serves: a live model (its scenario and seed) or a replay
        (its file)."""
        s = get_ops().server
        model = s.model
        return Health(kind=s.kind, scenario=model.scenario.name if model is not None else s.source,
                      seed=model.sim.seed if model is not None else None)

    @app.get(f"{PREFIX}/sessions", response_model=SessionList,
             responses=responses_of({"sessions": [EXAMPLE_SESSION]}, 409, e409=LIVE_ONLY))
    async def list_sessions() -> SessionList:
        """Every session of the model, as the state manager has it now."""
        return SessionList(sessions=get_ops().sessions())

    @app.post(f"{PREFIX}/sessions", response_model=Session, status_code=201, responses=responses_of(
        {**EXAMPLE_SESSION, "session_id": "admin-0001", "state": "listening", "created_by": "admin"}, 409, 415, 422,
        status=201, e409="The id is taken (or reserved by the scenario), or this server replays a recording."))
    async def create_session(body: Annotated[CreateSession | None, Body(openapi_examples={
            "generated id": {"value": {}}, "chosen": {"value": {"session_id": "abc", "turns": 2,
                                                               "audio_quality": 0.9, "start": True}}})] = None,
                             ) -> Session:
        """Create a session from the scenario's template (started at once unless ``start`` is false); without a
        ``session_id``, one is made up (``admin-0001``, ...)."""
        return get_ops().create(body or CreateSession())

    @app.get(f"{PREFIX}/sessions/{{session_id}}", response_model=Session,
             responses=responses_of(EXAMPLE_SESSION, 404, 409, e404=NO_SESSION, e409=LIVE_ONLY))
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
                 responses=responses_of({**EXAMPLE_SESSION, "status": status}, 404, 409, 415, e404=NO_SESSION,
                                      e409=f"{action} is illegal in the session's state (e.g. pause a paused "
                                           "session), or this server replays a recording."))(control)

    for action in ("start", "pause", "stop"):
        control_endpoint(action)

    @app.post(f"{PREFIX}/sessions/{{session_id}}/push", response_model=Scheduled, responses=responses_of(
        {"scheduled": 2}, 404, 409, 415, 422,
        e404="No session of this id (add ?allow_unknown=true to send to the watchers of an id the model does not "
             "know).", e409=LIVE_ONLY))
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

    @app.get(f"{PREFIX}/clock", response_model=Clock, responses=responses_of(EXAMPLE_CLOCK))
    async def clock() -> Clock:
        """The clock: simulated time ``t``, paused or not, speed, and when the next model event is due."""
        return get_ops().clock()

    @app.post(f"{PREFIX}/clock/pause", response_model=Clock, responses=responses_of(EXAMPLE_CLOCK, 415))
    async def pause() -> Clock:
        """Pause the clock: nothing moves (clients' controls are still answered, at the paused time)."""
        return get_ops().pause()

    @app.post(f"{PREFIX}/clock/resume", response_model=Clock,
              responses=responses_of({**EXAMPLE_CLOCK, "paused": False}, 415))
    async def resume() -> Clock:
        """Resume the clock from where it was paused (no jump)."""
        return get_ops().resume()

    @app.post(f"{PREFIX}/clock/speed", response_model=Clock,
              responses=responses_of({**EXAMPLE_CLOCK, "speed": 10.0}, 415, 422))
    async def speed(body: Annotated[SpeedBody, Body(openapi_examples={"ten times": {"value": {"speed": 10}}})],
                    ) -> Clock:
        """Run at ``speed`` simulated seconds per wall second from now on (no jump in simulated time)."""
        return get_ops().set_speed(body.speed)

    @app.post(f"{PREFIX}/clock/step", response_model=ClockMoved,
              responses=responses_of(EXAMPLE_MOVED, 409, 415, 422, e409=LIVE_ONLY))
    async def step(body: Annotated[StepBody | None, Body(openapi_examples={
            "three transitions": {"value": {"count": 3}}})] = None) -> ClockMoved:
        """Run the model to its next ``count`` state transitions, then pause; the answer lists the first
        ``limit`` of them."""
        body = body or StepBody()
        return await get_ops().step(body.count, body.limit)

    @app.post(f"{PREFIX}/clock/advance", response_model=ClockMoved,
              responses=responses_of(EXAMPLE_MOVED, 409, 415, 422, e409=LIVE_ONLY))
    async def advance(body: Annotated[AdvanceBody, Body(openapi_examples={
            "2.5 s": {"value": {"seconds": 2.5}}})]) -> ClockMoved:
        """Move simulated time by exactly ``seconds``, as fast as the model goes, then pause; the answer lists
        the first ``limit`` transitions passed and counts them all."""
        return await get_ops().advance(body.seconds, body.limit)

    @app.post(f"{PREFIX}/clock/run-until", response_model=RunUntilResult, responses=responses_of(
        {"clock": EXAMPLE_CLOCK, "session": EXAMPLE_SESSION, "reached": True}, 404, 408, 409, 415, 422,
        e404="No session of this id, and the scenario will not create one.", e409=LIVE_ONLY))
    async def run_until(body: Annotated[RunUntilBody, Body(openapi_examples={"LLM executing": {"value": {
            "session_id": "demo-1", "until": {"services.llm": "executing"}}}})]) -> RunUntilResult:
        """Run as fast as possible until the session matches every field of ``until``; the clock is left paused
        at that transition."""
        return await get_ops().run_until(body)

    @app.post(f"{PREFIX}/faults", response_model=FaultApplied, responses=responses_of(
        {"applied": {"fault": "kafka_stall", "session_id": None, "from_t": 12.5, "service": "llm",
                     "duration_s": 4.0, "until_t": 16.5}}, 404, 409, 415, 422,
        e404="A disconnect of a session the model does not know.", e409=LIVE_ONLY))
    async def faults(body: Annotated[FaultBody, Body(openapi_examples={"a 4 s Kafka stall of the LLM": {"value": {
            "fault": "kafka_stall", "service": "llm", "duration_s": 4}}})]) -> FaultApplied:
        """Inject a fault as a client's fault_injection would; the answer says what was applied and its window
        in simulated time."""
        return get_ops().fault(body)

    @app.get(f"{PREFIX}/journal", response_model=JournalEntries, responses=responses_of(
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

    @app.delete(f"{PREFIX}/journal", response_model=Cleared, responses=responses_of({"cleared": 120}))
    async def clear_journal() -> Cleared:
        """Forget every entry of the journal (ids go on counting)."""
        j = get_ops().server.journal
        return Cleared(cleared=j.clear() if j is not None else 0)

    @app.post(f"{PREFIX}/reset", response_model=Clock,
              responses=responses_of({**EXAMPLE_CLOCK, "t": 0.0, "next_event_t": 0.0}, 409, 415, e409=LIVE_ONLY))
    async def reset() -> Clock:
        """Back to the scenario's start, same seed: watchers get session_ended (reason reset) for the old
        sessions, the journal is cleared, and a recording starts a new segment."""
        return await get_ops().reset()

    @app.post(f"{PREFIX}/replay/seek", response_model=Clock, responses=responses_of(
        {**EXAMPLE_CLOCK, "t": 50.5}, 409, 415, 422, e409="Only a replay can seek; a live model moves forward."))
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

    def __init__(self, server: Served, port: int, token: str | None = None, tls: Tls | None = None) -> None:
        self.server, self.port, self.token, self.tls = server, port, token or None, tls
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
        tls = self.tls
        config = uvicorn.Config(build_app(self.server, token=self.token), log_config=None, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=1, server_header=False,
                                # the WebSocket side's certificate (checked there): https:// as wss://
                                ssl_certfile=tls and str(tls.cert), ssl_keyfile=tls and str(tls.key))
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
        return f"{'https' if self.tls else 'http'}://{ADMIN_HOST}:{self.port}{PREFIX}"

