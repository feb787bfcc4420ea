"""The admin API's OpenAPI document: what each operation answers, with examples, and the errors it documents.

>>> responses_of(EXAMPLE_CLOCK, 409)[409]["content"]["application/json"]["example"]["error"]["code"]
'illegal_control'
"""

from __future__ import annotations

import json
from typing import Any

from pipesim.live.admin_models import ErrorBody

# Answers ------------------------------------------------------
EXAMPLE_CLOCK = {"t": 12.5, "paused": True, "speed": 1.0, "next_event_t": 12.62}
EXAMPLE_SESSION = {"session_id": "demo-1", "status": "active", "state": "processing",
            "services": {"stt": "complete", "llm": "executing", "tts": "idle"}, "turn_id": 2, "seq": 41,
            "buffer_size": 0, "audio_quality": 0.82, "created_by": "scenario"}
EXAMPLE_UPDATE = {"type": "pipeline_state_update", "session_id": "demo-1", "state": "processing",
           "services": {"stt": "complete", "llm": "executing", "tts": "idle"},
           "metadata": {"buffer_size": 0, "audio_quality": 0.82}, "timestamp": 12.5, "seq": 41}
EXAMPLE_MOVED = {"clock": EXAMPLE_CLOCK, "transitions": [EXAMPLE_UPDATE], "transitions_total": 1, "truncated": False}

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


def responses_of(example: Any, *errors: int, status: int = 200,
                 error_examples: dict[int, tuple[str, str]] | None = None,
                 **why: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of an operation: its answer's example, then each error it may answer (besides the
    access checks every operation has, and 415 for a POST) with why and an example; ``why`` overrides the
    reason (``e404="..."``), ``error_examples`` the example's code and message (``{404: (code, message)}``)."""
    out: dict[int | str, dict[str, Any]] = {status: {"content": {"application/json": {"example": example}}}}
    for code in sorted({*_ACCESS, *errors}):
        reason, error_code, message = _ERRORS[code]
        error_code, message = (error_examples or {}).get(code, (error_code, message))
        out[code] = {"model": ErrorBody, "description": why.get(f"e{code}", reason),
                     "content": {"application/json": {"example": {"error": {"code": error_code,
                                                                            "message": message}}}}}
    return out


NO_SESSION = "No session of this id (on a replay: 409)."
LIVE_ONLY = "This server replays a recording: only the clock, seek, the journal and health are available."


def as_served(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document as the admin API serves it: without FastAPI's own 422, with the bearer scheme."""
    # FastAPI documents a 422 of its own (HTTPValidationError) on every operation with a parameter: a path's
    # session_id cannot fail, and our 422 is an ErrorBody, documented where it can happen.
    for item in doc["paths"].values():
        for operation in item.values():
            fastapi_422 = operation["responses"].get("422", {})
            if "HTTPValidationError" in json.dumps(fastapi_422):
                del operation["responses"]["422"]
    for unused in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(unused, None)
    # Declared, not enforced here: the admin API's guard checks the token (only when the server has one).
    doc.setdefault("components", {}).setdefault("securitySchemes", {"adminToken": {
        "type": "http", "scheme": "bearer", "description": "Needed only when the server was started with "
        "--admin-token TOKEN (or $PIPESIM_ADMIN_TOKEN): Authorization: Bearer TOKEN."}})
    doc["security"] = [{"adminToken": []}, {}]
    return doc


# Bodies and answers of stubs, journal queries, reset and recording ------------------------------
EXAMPLE_ENTRY = {"id": 7, "wall_time": "2026-01-05T10:00:00.125000+00:00", "t": 12.5, "direction": "in",
                 "connection": "c1", "session_id": "demo-1", "type": "conversation_control",
                 "message": {"type": "conversation_control", "action": "pause", "session_id": "demo-1"},
                 "result": "applied", "stub": None}
JOURNAL_EXAMPLES = {
    "the pauses the page sent for demo-1": {"value": {"direction": "in", "session_id": "demo-1",
                                                       "type": "conversation_control", "message": {"action": "pause"}}},
    "controls refused as unknown": {"value": {"direction": "in", "result": {"error": {"code": "unknown_session"}}}},
    "what a stub took, after entry 120": {"value": {"stub": "slow-pause", "since": 120}},
}
EXAMPLE_STUB = {"id": "slow-pause", "when": {"path": "/ws", "type": "conversation_control",
                                             "message": {"action": "pause"}},
                "then": {"respond": [], "fault": None, "pass_through": True, "close": None, "delay_s": 2.0},
                "priority": 5, "times": 1, "matched": 0, "exhausted": False}
STUB_EXAMPLES = {
    "pause applied 2 s late, once": {"value": {"id": "slow-pause", "when": {
        "type": "conversation_control", "message": {"action": "pause"}}, "then": {"pass_through": True, "delay_s": 2},
        "times": 1}},
    "refuse to start demo-1": {"value": {"when": {"session_id": "demo-1", "message": {"action": "start"}}, "then": {
        "respond": [{"type": "error", "code": "illegal_control", "message": "start: the orchestrator is full"}]}}},
    "an RTVI client-message answered, then the socket closed": {"value": {"when": {
        "path": "/rtvi", "type": "client-message", "message": {"data": {"t": "ping"}}}, "then": {
        "respond": [{"type": "server-response", "data": {"t": "ping", "d": {"pong": True}}}],
        "close": {"code": 4001, "reason": "stubbed"}}, "priority": 1}},
    "a Kafka stall when a session stops": {"value": {"when": {"message": {"action": "stop"}}, "then": {
        "pass_through": True, "fault": {"fault": "kafka_stall", "service": "llm", "duration_s": 4}}}},
}
NO_STUB = "No stub of this id (on a replay: 409)."
NO_STUB_EXAMPLE = {404: ("not_found", "unknown stub 'stub-9'")}
EXAMPLE_RECORDING = {"path": "/tmp/pipesim-recording.jsonl", "recording": True, "messages": 120, "segments": 1}

RESET_EXAMPLES = {
    "the same scenario and seed": {"value": {}},
    "a bundled scenario, seed and speed": {"value": {"scenario": "baseline", "seed": 7, "speed": 10}},
    "a scenario of its own": {"value": {"scenario": {"name": "two-users", "sessions": {
        "arrivals": {"kind": "at_once", "count": 2}, "turns": 3}}}},
}
