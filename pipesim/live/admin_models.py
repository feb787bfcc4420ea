"""The admin API's bodies and answers, its errors and its JSON reader (its OpenAPI examples: admin_docs.py).

Each body refuses a field it does not know (a misspelt option must not be ignored silently); a body that
is not JSON, or a value the guarded reader refuses, is answered 422 naming where (:func:`json_error`).

>>> json_path_at('{"messages": [{"after_s": 1e999}]}', 26)
'body.messages[0].after_s'
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipesim import _jsonsafe
from pipesim.live.stubs import CLOSE_CODES
from pipesim.vocabulary import FaultKind, PipelineState, ServiceName, ServiceState, SessionStatus


# Models ----------------------------------------------------------------------------------------------
class _Body(BaseModel):
    # A misspelt option must not be ignored silently: a test would assert against the wrong setup.
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="unknown_session, illegal_control, bad_request, forbidden, unauthorized, "
                                  "unsupported, timeout, not_found, conflict, ...")
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
    result: Any = Field(description='Inbound only: "applied", {"error": {code, message}}, "stubbed" (a stub '
                                    'answered instead) or "delayed" (a stub passes it on later).')
    stub: str | None = Field(None, description="Inbound only: the id of the stub that took the message.")


class JournalEntries(BaseModel):
    entries: list[JournalEntry]
    last_id: int = Field(description="The id of the newest entry of the journal, whatever the filters (0 when "
                                     "none was ever made): pass it as `since` to read only what comes next.")


class Cleared(BaseModel):
    cleared: int


# Stubs and journal queries (the pattern language: pipesim.live.stubs) -------------------------------------
_Id = Annotated[str, Field(min_length=1, max_length=200)]
_JSON_SUBSET = "A JSON subset of the message as the client sent it: objects match recursively, anything else " \
               "must be equal."


class StubWhen(_Body):
    """Which inbound messages the stub takes: every field given must match."""

    path: Literal["/ws", "/rtvi"] = Field("/ws", description="The endpoint the message came in on.")
    type: _Id | None = Field(None, description="The message's type (conversation_control, client-message, ...).")
    session_id: _Id | None = Field(None, description="The session the message is about (on /rtvi: the "
                                                     "connection's, rtvi-1, ...).")
    connection: _Id | None = Field(None, description="The connection's journal id (c1, c2, ...).")
    message: dict[str, Any] | None = Field(None, description=_JSON_SUBSET)


class CloseWith(_Body):
    code: int = Field(description="4000-4999, or 1000, 1001, 1008, 1011, 1013.")
    reason: Annotated[str, Field(max_length=120)] = "stub"

    @field_validator("code")
    @classmethod
    def _allowed(cls, code: int) -> int:
        if code not in CLOSE_CODES:
            raise ValueError("must be 4000-4999 or one of 1000, 1001, 1008, 1011, 1013")
        return code


class StubThen(_Body):
    """What the stub does with a message it takes, in this order, ``delay_s`` simulated seconds later."""

    respond: Annotated[list[dict[str, Any]], Field(max_length=1_000, description=(
        "Messages sent to the connection that sent it: on /ws server messages of the protocol (session_id, seq and "
        "timestamp filled in when absent); on /rtvi RTVI messages (label, and the request's id on a "
        "server-response or error-response, filled in)."))] = []
    fault: FaultBody | None = Field(None, description="A fault applied, as POST /__admin/faults.")
    pass_through: bool = Field(False, description="Then hand the message to the normal handling (false: the stub "
                                                  "replaces it).")
    close: CloseWith | None = Field(None, description="Then close the connection (once what was sent is written).")
    delay_s: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False, description=(
        "Simulated seconds before all of it (a paused clock holds it)."))] = 0.0


class StubBody(_Body):
    id: _Id | None = Field(None, description="Made up (stub-1, ...) when absent.")
    when: StubWhen
    then: StubThen
    priority: Annotated[int, Field(ge=1, le=1_000_000, description=(
        "1 is tried first; among equal priorities the newest stub."))] = 5
    times: Annotated[int | None, Field(ge=1, le=1_000_000_000, description=(
        "Take at most this many messages, then stay listed, exhausted (null: no limit)."))] = None


class StubAnswer(BaseModel):
    id: str
    when: dict[str, Any]
    then: dict[str, Any]
    priority: int
    times: int | None
    matched: int = Field(description="Messages the stub took.")
    exhausted: bool = Field(description="It took `times` messages and takes no more.")


class StubList(BaseModel):
    stubs: list[StubAnswer] = Field(description="In the order they are tried.")


class JournalQuery(_Body):
    """A pattern over the journal's entries: every field given must match."""

    direction: Literal["in", "out"] | None = None
    connection: _Id | None = None
    session_id: _Id | None = None
    type: _Id | None = None
    message: dict[str, Any] | None = Field(None, description=_JSON_SUBSET)
    result: Any = Field(None, description='A JSON subset of the result: "applied", "stubbed", '
                                          '{"error": {"code": "unknown_session"}}, ...')
    stub: _Id | None = Field(None, description="The id of the stub that took the message.")
    since: Annotated[int | None, Field(ge=0, description="An entry id: only the entries made after it.")] = None


class JournalFind(JournalQuery):
    limit: Annotated[int | None, Field(ge=0, le=1_000_000, description=(
        "Only the newest `limit` of the matching entries."))] = None


class Counted(BaseModel):
    count: int


class ResetBody(_Body):
    scenario: str | dict[str, Any] | None = Field(None, description=(
        "A bundled scenario's name (baseline, frontend_demo, ...) or a scenario as a mapping (validated as a "
        "scenario file); absent: the same scenario."))
    seed: Annotated[int | None, Field(ge=0, le=2**63 - 1, description=(
        "Absent: the same seed, or the new scenario's own."))] = None
    speed: Annotated[float | None, Field(gt=0, le=1e6, allow_inf_nan=False, description=(
        "Absent: the same speed."))] = None


class RecordingBody(_Body):
    path: Annotated[str, Field(min_length=1, max_length=4096, description=(
        "The recording's file (JSON Lines), an absolute path on the server's machine; its folders are created."))]

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if "\0" in path or not Path(path).is_absolute():
            raise ValueError("must be an absolute path (the server's folder is not the caller's)")
        return path


class Recording(BaseModel):
    path: str | None = Field(description="The file being (or last) written; null: none.")
    recording: bool
    messages: int = Field(description="Messages written so far.")
    segments: int = Field(description="Segments (a reset starts a new one).")


class SeekBody(_Body):
    t: Annotated[float, Field(allow_inf_nan=False)]


class AdminError(Exception):
    """An admin request that cannot be honoured: answered with ``status`` and the error body."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status)


def field_path(loc: tuple[Any, ...]) -> str:
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


def json_path_at(text: str, pos: int) -> str:
    """The field path (``body.messages[0].after_s``) of the value at character ``pos`` of a JSON text, read
    from the text before it (which the decoder took).

    >>> json_path_at('{"messages": [{"after_s": 1e999}]}', 26)
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
    return field_path(("body", *(p for p in parts if p is not None)))


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


class GuardedJSONRoute(APIRoute):
    """FastAPI's route, handing its endpoint a :class:`_GuardedJSONRequest` (FastAPI's documented way to
    change how a body is read: a custom ``APIRoute`` class)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await handler(_GuardedJSONRequest(request.scope, request.receive))

        return guarded


def json_error(text: str, err: dict[str, Any]) -> str:
    """The one line for a body FastAPI could not decode: the field where it failed, else that it is not JSON."""
    loc = err.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
    reason = str((err.get("ctx") or {}).get("error", "not JSON"))
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    where = json_path_at(text, pos)
    if where == "body":
        return f"body: not JSON: {reason} (line {line} column {column})"
    return f"{where[:200]}: {reason} (line {line} column {column} of the body)"
