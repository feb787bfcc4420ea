"""The WebSocket wire protocol of the orchestrator (port 8001, path ``/ws``).

The two messages of the production orchestrator's protocol are reproduced field for field and value
for value:

* ``pipeline_state_update`` (server -> client): ``type``, ``session_id``, ``state``, ``services``,
  ``metadata``.
* ``conversation_control`` (client -> server): ``type``, ``action``, ``session_id``.

Documented extensions (a client written against the seed alone keeps working, because no seed field
is renamed, retyped or removed and every extension field is additional):

* every ``pipeline_state_update`` also carries ``timestamp`` (seconds of simulated time since the
  run started), ``seq`` (per-session sequence number, starting at 0 with ``session_created`` and
  increasing by 1 with every message about that session, ``session_ended`` included; a snapshot repeats
  the ``seq`` of the last message, so a client may drop any update whose ``seq`` is lower than the last
  it has), ``turn_id`` (0 before the first turn), ``event`` (what caused the
  update), ``status`` (the session lifecycle: ``created|active|paused|stopped``) and ``error``
  (``null``, or the reason a turn failed).
* ``session_created`` and ``session_ended`` (server -> client) bracket a session's updates.
* ``error`` (server -> client) answers a client message that could not be honoured.
* ``fault_injection`` (client -> server) asks the mock backend to inject a fault.

Parse anything that arrives with :func:`parse_message`; it raises :class:`ProtocolError` with a
message that says exactly what is wrong.

>>> msg = parse_message('{"type":"conversation_control","action":"pause","session_id":"abc"}')
>>> msg.action
'pause'
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipesim import _jsonsafe
from pipesim.errors import ProtocolError
from pipesim.vocabulary import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    ControlAction,
    FaultKind,
    PipelineState,
    ServiceName,
    ServiceState,
    SessionStatus,
)

#: Largest inbound message the live server accepts, in bytes.
MAX_MESSAGE_BYTES = 64 * 1024


class _Outbound(BaseModel):
    # What we send is exactly what the schema says: unknown fields are a bug on our side.
    model_config = ConfigDict(extra="forbid")


class _Inbound(BaseModel):
    # Be liberal in what we accept from clients: extra fields are ignored, not rejected.
    model_config = ConfigDict(extra="ignore")


class Services(_Outbound):
    """Per-service state of the current turn (seed field ``services``)."""

    stt: ServiceState
    llm: ServiceState
    tts: ServiceState


class Metadata(_Outbound):
    """Audio metadata (seed field ``metadata``)."""

    buffer_size: Annotated[int, Field(ge=0, description="Bytes of user audio buffered for this turn.")]
    audio_quality: Annotated[float, Field(ge=0.0, le=1.0, description="Running quality score, 0..1.")]


class PipelineStateUpdate(_Outbound):
    """Seed message: the state of one pipeline session, sent at every transition.

    >>> PipelineStateUpdate(session_id="s1", state="listening",
    ...     services={"stt": "idle", "llm": "idle", "tts": "idle"},
    ...     metadata={"buffer_size": 0, "audio_quality": 0.0}).state
    'listening'
    """

    type: Literal["pipeline_state_update"] = "pipeline_state_update"
    session_id: str
    state: PipelineState
    services: Services
    metadata: Metadata
    # Extensions (optional so that the seed's example parses as it is).
    timestamp: Annotated[float | None, Field(description="Simulated time of the transition, seconds.")] = None
    seq: Annotated[int | None, Field(ge=0, description=(
        "Per-session message sequence number: 0 on session_created, +1 on every message about the session; "
        "a snapshot repeats the seq of the last message."))] = None
    turn_id: Annotated[int | None, Field(ge=0, description="The user turn this update belongs to.")] = None
    event: Annotated[str | None, Field(description="The state-manager event that caused the update.")] = None
    status: Annotated[SessionStatus | None, Field(description="Session lifecycle status.")] = None
    error: Annotated[str | None, Field(description="Why the turn failed, on the update that failed it.")] = None


class SessionCreated(_Outbound):
    """Extension: a pipeline session was created (first message about a session)."""

    type: Literal["session_created"] = "session_created"
    session_id: str
    timestamp: float
    seq: Annotated[int, Field(ge=0)]


class SessionEnded(_Outbound):
    """Extension: a pipeline session ended; no further messages about it follow."""

    type: Literal["session_ended"] = "session_ended"
    session_id: str
    timestamp: float
    seq: Annotated[int, Field(ge=0)]
    reason: str


class ErrorMessage(_Outbound):
    """Extension: a client message could not be honoured. The connection stays open.

    ``code``: ``bad_message`` (not JSON, unknown type, a missing or invalid field), ``too_large`` (over
    64 KiB), ``unknown_session``, ``illegal_control`` (not in the session's state, or an id the scenario
    keeps), ``forbidden`` (the server runs owner-only and another connection started the session),
    ``unsupported`` (a replay cannot be controlled).
    """

    type: Literal["error"] = "error"
    code: Literal["bad_message", "unknown_session", "illegal_control", "too_large", "unsupported", "forbidden"]
    message: str
    session_id: str | None = None


class ConversationControl(_Inbound):
    """Seed message: a client asks to start (or resume), pause or stop a session.

    >>> ConversationControl(action="start", session_id="abc").model_dump()
    {'type': 'conversation_control', 'action': 'start', 'session_id': 'abc'}
    """

    type: Literal["conversation_control"] = "conversation_control"
    action: ControlAction
    session_id: Annotated[str, Field(min_length=1, max_length=200)]


class FaultInjection(_Inbound):
    """Extension: inject a fault into the running mock backend.

    ``kafka_stall`` holds every Kafka delivery (or only ``service``'s topic) for ``duration_s``;
    ``service_outage`` makes ``service`` consume nothing for ``duration_s``; ``disconnect`` closes the
    connections watching ``session_id``.
    """

    type: Literal["fault_injection"] = "fault_injection"
    fault: FaultKind
    session_id: str | None = None
    service: ServiceName | None = None
    duration_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


_MESSAGE_TYPES: dict[str, type[BaseModel]] = {
    m.model_fields["type"].default: m
    for m in (PipelineStateUpdate, SessionCreated, SessionEnded, ErrorMessage, ConversationControl, FaultInjection)
}
assert set(_MESSAGE_TYPES) == {*SERVER_MESSAGE_TYPES, *CLIENT_MESSAGE_TYPES}  # the models follow the vocabulary


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error names the bad value without echoing 64 KiB."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(err: dict[str, Any], type_name: str) -> str:
    where = _shown(".".join(str(p) for p in err["loc"]) or "(message)").strip("'")
    if err["type"] == "missing":
        return f"{type_name}.{where}: required field is missing"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{type_name}.{where}: must be one of {expected}, got {_shown(err['input'])}"
    return f"{type_name}.{where}: {err['msg'].lower()}, got {_shown(err['input'])}"


def parse_message(raw: str | bytes, *, allowed: tuple[str, ...] | None = None) -> BaseModel:
    """Parse one raw WebSocket message into its pydantic model.

    ``allowed`` restricts the accepted ``type`` values (the server accepts only client messages).
    Raises :class:`ProtocolError` naming what is wrong: bad JSON, a missing or unknown ``type``, or
    each invalid field with its value.

    >>> try:
    ...     parse_message(b'{"type":"conversation_control","action":"jump","session_id":"a"}')
    ... except ProtocolError as exc:
    ...     print(exc)
    conversation_control.action: must be one of 'start', 'stop' or 'pause', got 'jump'
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"message is not UTF-8 text (byte {exc.start})") from None
    try:
        data = _jsonsafe.loads(raw)  # refuses deep nesting and huge integers before they crash the decoder
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(data).__name__}")
    if "type" not in data:
        raise ProtocolError("message has no 'type' field")
    type_name = data["type"]
    known = allowed if allowed is not None else tuple(_MESSAGE_TYPES)
    if type_name not in known:
        raise ProtocolError(f"unknown message type {_shown(type_name)} (expected one of {', '.join(known)})")
    try:
        return _MESSAGE_TYPES[type_name].model_validate(data)
    except ValidationError as exc:
        raise ProtocolError("; ".join(_describe(e, type_name) for e in exc.errors())) from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message, keyed by its ``type``.

    >>> sorted(json_schemas())[:2]
    ['conversation_control', 'error']
    """
    return {name: model.model_json_schema() for name, model in _MESSAGE_TYPES.items()}


def dumps(message: dict[str, Any] | BaseModel) -> str:
    """Serialise a message for the wire: compact JSON, keys in the order of the schema."""
    if isinstance(message, BaseModel):
        message = message.model_dump(mode="json")
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def wire_messages(tr: Any) -> list[dict[str, Any]]:
    """The server messages a client receives for one state-manager transition, as plain dicts.

    Every transition is one ``pipeline_state_update`` except the first (``session_created``) and the
    last, which is followed by ``session_ended``. Every message about a session has its own ``seq``, one
    more than the one before: the transition's, and ``session_ended`` the next one (no transition follows
    a stop). Plain dicts keep pydantic out of the hot path; tests check that they validate against the
    models above.
    """
    if tr.event == "session_created":
        return [{"type": "session_created", "session_id": tr.session_id, "timestamp": tr.t, "seq": tr.seq}]
    update = {
        "type": "pipeline_state_update",
        "session_id": tr.session_id,
        "state": tr.state,
        "services": {"stt": tr.stt, "llm": tr.llm, "tts": tr.tts},
        "metadata": {"buffer_size": tr.buffer_size, "audio_quality": tr.audio_quality},
        "timestamp": tr.t,
        "seq": tr.seq,
        "turn_id": tr.turn_id,
        "event": tr.event,
        "status": tr.status,
        "error": tr.error,
    }
    if tr.event == "session_stopped":
        return [update, {"type": "session_ended", "session_id": tr.session_id, "timestamp": tr.t,
                         "seq": tr.seq + 1, "reason": tr.error or "stopped"}]
    return [update]


#: A string as JSON text, as ``dumps`` writes it (the JSON module's own C escaper, ASCII only).
json_string = encode_basestring_ascii

#: The wire text of :func:`wire_messages`' three shapes as ``%`` templates, in ``dumps``' key order: fill
#: the slots with JSON values (strings through :func:`json_string`) to get what ``dumps`` would write.
#: The live server encodes one transition with them, ``Results.messages`` a whole trace's column by column.
UPDATE_TEMPLATE = ('{"type":"pipeline_state_update","session_id":%s,"state":%s,"services":{"stt":%s,"llm":%s,'
                   '"tts":%s},"metadata":{"buffer_size":%s,"audio_quality":%s},"timestamp":%s,"seq":%s,"turn_id":%s,'
                   '"event":%s,"status":%s,"error":%s}')
CREATED_TEMPLATE = '{"type":"session_created","session_id":%s,"timestamp":%s,"seq":%s}'
ENDED_TEMPLATE = '{"type":"session_ended","session_id":%s,"timestamp":%s,"seq":%s,"reason":%s}'
