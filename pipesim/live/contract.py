"""The ``/ws`` contract as machine-readable documents, built from the wire models of :mod:`pipesim.protocol`.

Two documents come out of the same pydantic models, so neither can drift from what the server sends:

* :func:`asyncapi_document` -- an `AsyncAPI 3.0.0 <https://www.asyncapi.com/docs/reference/specification/v3.0.0>`_
  description of the WebSocket channel (``pipesim schema --format asyncapi``), for docs and code generators.
* :func:`combined_json_schema` -- one JSON Schema holding every message, from which
  ``scripts/gen-types.sh`` generates the TypeScript types in ``frontend/src/pipesim-protocol.ts``.

Both share :func:`component_schemas`: the schema of each message with pydantic's ``$defs`` hoisted next to
the messages, ``$ref``\\ s rewritten to match, ``type`` marked required (the server rejects a message without
it and always sends it), pydantic's per-field titles dropped and the protocol's enumerations given their
names (``ServiceState``, ``PipelineState``, ...) so that generated code reads like hand-written code.

>>> doc = asyncapi_document()
>>> doc["asyncapi"], doc["channels"]["ws"]["address"]
('3.0.0', '/ws')
>>> sorted(m["name"] for m in doc["components"]["messages"].values())[:3]
['conversation_control', 'error', 'fault_injection']
>>> doc["operations"]["receiveConversationControl"]["action"]
'receive'
>>> combined_json_schema()["$defs"]["Services"]["properties"]["stt"]
{'$ref': '#/$defs/ServiceState'}
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any, get_args

from pipesim import __version__, protocol
from pipesim.protocol import json_schemas
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES

#: The protocol's enumerations by name; a field whose ``enum`` has exactly these values refers to the name.
NAMED_ENUMS: dict[str, tuple[str, ...]] = {
    "PipelineState": get_args(protocol.PipelineState),
    "ServiceState": get_args(protocol.ServiceState),
    "SessionStatus": get_args(protocol.SessionStatus),
    "ControlAction": get_args(protocol.ControlAction),
    "FaultKind": get_args(protocol.FaultKind),
    "ServiceName": get_args(protocol.ServiceName),
    "ErrorCode": get_args(protocol.ErrorMessage.model_fields["code"].annotation),
}

_DOCTEST = re.compile(r"\n\s*>>>.*", re.DOTALL)
_SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data):`")


def _clean_description(text: str) -> str:
    """A docstring as Markdown: doctest examples dropped, Sphinx roles and RST ````code```` made `code`."""
    return _SPHINX_ROLE.sub("`", _DOCTEST.sub("", text)).strip().replace("``", "`")


def _named_enum(schema: dict[str, Any]) -> str | None:
    if "enum" not in schema or not set(schema) <= {"enum", "type", "title"}:
        return None
    for name, values in NAMED_ENUMS.items():
        if tuple(schema["enum"]) == values:
            return name
    return None


def _tidy(node: Any, ref_prefix: str, *, top: bool) -> Any:
    """Rewrite one (sub)schema: ``$ref`` targets, named enums, titles and descriptions."""
    if isinstance(node, list):
        return [_tidy(item, ref_prefix, top=False) for item in node]
    if not isinstance(node, dict):
        return node
    if not top and (name := _named_enum(node)):
        return {"$ref": ref_prefix + name}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = ref_prefix + value.removeprefix("#/$defs/")
        elif key == "title" and not top:
            continue  # pydantic's "Session Id" and the like: noise in docs, junk type names in TypeScript
        elif key == "description" and isinstance(value, str):
            out[key] = _clean_description(value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {prop: _tidy(sub, ref_prefix, top=False) for prop, sub in value.items()}
        else:
            out[key] = _tidy(value, ref_prefix, top=False)
    return out


def component_schemas(ref_prefix: str = "#/components/schemas/") -> dict[str, dict[str, Any]]:
    """Every schema the messages need, by name, with ``$ref``\\ s pointing to ``ref_prefix + name``.

    The message schemas come first (named by their model, e.g. ``PipelineStateUpdate``), then the shared
    objects they use (``Services``, ``Metadata``), then the named enumerations. Raises ``ValueError`` if two
    messages define different schemas under one name (the document would otherwise be silently wrong).

    >>> schemas = component_schemas()
    >>> list(schemas)[:2]
    ['PipelineStateUpdate', 'SessionCreated']
    >>> schemas["PipelineStateUpdate"]["properties"]["services"]
    {'$ref': '#/components/schemas/Services'}
    >>> schemas["ServiceState"]["enum"]
    ['idle', 'waiting', 'executing', 'complete']
    """
    messages: dict[str, dict[str, Any]] = {}
    shared: dict[str, dict[str, Any]] = {}
    for type_name, raw in json_schemas().items():
        schema = copy.deepcopy(raw)
        for def_name, definition in schema.pop("$defs", {}).items():
            tidy = _tidy(definition, ref_prefix, top=True)
            if shared.setdefault(def_name, tidy) != tidy:
                raise ValueError(f"two messages define different schemas named {def_name!r}")
        required = [f for f in schema.get("required", []) if f != "type"]
        schema["required"] = ["type", *required]
        schema["properties"]["type"].pop("default", None)  # required now: a default would only confuse
        name = schema.get("title") or type_name
        if name in messages:
            raise ValueError(f"two messages are both named {name!r}")
        messages[name] = _tidy(schema, ref_prefix, top=True)
    enums = {
        name: {"title": name, "type": "string", "enum": list(values)} for name, values in NAMED_ENUMS.items()
    }
    clash = (set(messages) & set(shared)) | ((set(messages) | set(shared)) & set(enums))
    if clash:
        raise ValueError(f"schema names used twice: {', '.join(sorted(clash))}")
    return {**messages, **shared, **enums}


def _title(type_name: str) -> str:
    """``pipeline_state_update`` -> ``PipelineStateUpdate``: the schema's title, the model's class name."""
    return _titles()[type_name]


@functools.cache
def _titles() -> dict[str, str]:
    return {type_name: schema.get("title", type_name) for type_name, schema in json_schemas().items()}


def _message_id(type_name: str) -> str:
    """``pipeline_state_update`` -> ``pipelineStateUpdate`` (AsyncAPI component and channel keys)."""
    first, *rest = type_name.split("_")
    return first + "".join(part.capitalize() for part in rest)


#: One example per message, as a client sees or sends it; ``tests/test_contract.py`` checks that each
#: parses with :func:`pipesim.protocol.parse_message`.
EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "session_created": ("A session starts", {
        "type": "session_created", "session_id": "session_1753677151897_nx12ig45v", "timestamp": 0.0, "seq": 0}),
    "pipeline_state_update": ("The seed's live session, STT transcribing", {
        "type": "pipeline_state_update", "session_id": "session_1753677151897_nx12ig45v",
        "state": "processing", "services": {"stt": "executing", "llm": "idle", "tts": "idle"},
        "metadata": {"buffer_size": 5569, "audio_quality": 0.5708},
        "timestamp": 3.412, "seq": 17, "turn_id": 1, "event": "service_started", "status": "active",
        "error": None}),
    "session_ended": ("A client stopped the session", {
        "type": "session_ended", "session_id": "session_1753677151897_nx12ig45v", "timestamp": 42.0,
        "seq": 311, "reason": "stopped"}),
    "error": ("A control for a session that does not exist", {
        "type": "error", "code": "unknown_session", "message": "unknown session 'nope'", "session_id": "nope"}),
    "conversation_control": ("Pause a session (the seed's message)", {
        "type": "conversation_control", "action": "pause", "session_id": "session_1753677151897_nx12ig45v"}),
    "fault_injection": ("Stall the LLM's Kafka topic for 5 s", {
        "type": "fault_injection", "fault": "kafka_stall", "service": "llm", "duration_s": 5.0}),
}

_SUMMARIES = {
    "session_created": "A pipeline session was created; its first message.",
    "pipeline_state_update": "The state of one pipeline session, sent at every transition.",
    "session_ended": "A pipeline session ended; no further messages about it follow.",
    "error": "A client message could not be honoured; sent only to that client, the connection stays open.",
    "conversation_control": "Start (or resume), pause or stop a session.",
    "fault_injection": "Inject a fault into the running mock backend (pipesim extension).",
}

_CHANNEL_DESCRIPTION = """\
The orchestrator's one WebSocket endpoint. Every message is one JSON text frame with a `type` field.

Query parameter `session_id` (optional, repeatable): plain `/ws` receives the messages of every session
(the dashboard view); `/ws?session_id=abc` only those about session `abc`. A client also receives the
messages of every session it has controlled successfully.

On connect the server first sends, for each watched session that is not stopped, a
`pipeline_state_update` with `event: "snapshot"` (its `seq` is that of the last message sent about the
session); then every message as it happens: per session `session_created` (`seq` 0), any number of
`pipeline_state_update`, `session_ended`, each with its own `seq`, one more than the one before. A client
may therefore drop any message whose `seq` is not greater than the last it has for that session (a
snapshot aside, which repeats it).

A client may send `conversation_control` (the seed's controls: `start` creates a session that does not
exist yet or resumes a paused one, `pause`, `stop`) and `fault_injection`. A message that cannot be
honoured is answered with `error`, to that client only; nothing else changes and the connection stays
open. Any client may control any session, unless the server runs owner-only (`pipesim serve --owner-only`):
then a connection controls only the sessions it started, and others get `error` `forbidden`.

Handshake: a browser page must come from an allowed origin (by default http(s) on localhost, 127.0.0.1 or
[::1], any port, or the server's own); the `Host` header must name this machine (or an allowed host); a
server started with a token wants it as `Authorization: Bearer TOKEN` or as the `token` query parameter.
A refused handshake gets HTTP 403 with a one-line reason.
"""


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the ``/ws`` channel, self-contained (every ``$ref`` is local).

    Servers ``localhost:8001`` (protocol ``ws``; ``wss`` with TLS on), channel ``ws`` at address ``/ws`` (the optional
    ``session_id`` query parameter is in the channel's description and its WebSocket binding), one
    ``send`` operation per server message and one ``receive`` operation per client message. Payloads are
    :func:`component_schemas`; every message carries an example.

    >>> doc = asyncapi_document()
    >>> doc["servers"]["localhost"]["host"], doc["servers"]["localhost"]["protocol"]
    ('localhost:8001', 'ws')
    >>> doc["operations"]["sendPipelineStateUpdate"]["messages"]
    [{'$ref': '#/channels/ws/messages/pipelineStateUpdate'}]
    >>> doc["components"]["messages"]["pipelineStateUpdate"]["payload"]
    {'$ref': '#/components/schemas/PipelineStateUpdate'}
    """
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for type_name in (*SERVER_MESSAGE_TYPES, *CLIENT_MESSAGE_TYPES):
        msg_id, title = _message_id(type_name), _title(type_name)
        summary, example = EXAMPLES[type_name]
        messages[msg_id] = {
            "name": type_name,
            "title": title,
            "summary": _SUMMARIES[type_name],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{title}"},
            "examples": [{"name": f"{msg_id}Example", "summary": summary, "payload": example}],
        }
        action = "send" if type_name in SERVER_MESSAGE_TYPES else "receive"
        operations[f"{action}{title.removesuffix('Message')}"] = {
            "action": action,
            "channel": {"$ref": "#/channels/ws"},
            "summary": _SUMMARIES[type_name],
            "messages": [{"$ref": f"#/channels/ws/messages/{msg_id}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "pipesim orchestrator WebSocket protocol",
            "version": __version__,
            "description": _clean_description(protocol.__doc__ or ""),
        },
        "defaultContentType": "application/json",
        "servers": {
            "localhost": {
                "host": "localhost:8001",
                "protocol": "ws",
                "description": "`pipesim serve`, the mock backend (the production orchestrator listens on the "
                               "same port and path). Its dashboard is served at `http://localhost:8001/`.",
            },
            "localhostTls": {
                "host": "localhost:8001",
                "protocol": "wss",
                "description": "`pipesim serve --tls-self-signed` (or `--tls-cert FILE --tls-key FILE`): the "
                               "same protocol over TLS, the dashboard at `https://localhost:8001/`; the "
                               "certificate authority to trust is printed at start.",
            },
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "Pipeline state",
                "description": _CHANNEL_DESCRIPTION,
                "servers": [{"$ref": "#/servers/localhost"}, {"$ref": "#/servers/localhostTls"}],
                "messages": {msg_id: {"$ref": f"#/components/messages/{msg_id}"} for msg_id in messages},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "session_id": {
                                    "type": "string",
                                    "minLength": 1,
                                    "description": "Receive only the messages about this session; "
                                                   "without it, every session's messages.",
                                },
                                "token": {
                                    "type": "string",
                                    "description": "The server's token, if it was started with one (for "
                                                   "browsers, which cannot set an Authorization header).",
                                },
                            },
                        },
                        "bindingVersion": "0.1.0",
                    },
                },
            },
        },
        "operations": operations,
        "components": {"schemas": component_schemas(), "messages": messages},
    }


def combined_json_schema() -> dict[str, Any]:
    """One JSON Schema (draft 2020-12) of every message: the input of the TypeScript generator.

    Its root is the union ``PipesimMessage = ServerMessage | ClientMessage``; ``$defs`` holds those two
    unions, every message (``PipelineStateUpdate``, ``ConversationControl``, ...), their parts and the named
    enumerations, each with a ``title`` that becomes its exported TypeScript name.

    >>> schema = combined_json_schema()
    >>> schema["title"], [r["$ref"] for r in schema["$defs"]["ClientMessage"]["oneOf"]]
    ('PipesimMessage', ['#/$defs/ConversationControl', '#/$defs/FaultInjection'])
    """
    defs = component_schemas(ref_prefix="#/$defs/")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "PipesimMessage",
        "description": "Any message on pipesim's `/ws` WebSocket channel (one JSON text frame).",
        "oneOf": [{"$ref": "#/$defs/ServerMessage"}, {"$ref": "#/$defs/ClientMessage"}],
        "$defs": {
            "ServerMessage": {
                "title": "ServerMessage",
                "description": "A message the server sends; switch on `type`.",
                "oneOf": [{"$ref": f"#/$defs/{_title(t)}"} for t in SERVER_MESSAGE_TYPES],
            },
            "ClientMessage": {
                "title": "ClientMessage",
                "description": "A message a client may send.",
                "oneOf": [{"$ref": f"#/$defs/{_title(t)}"} for t in CLIENT_MESSAGE_TYPES],
            },
            **defs,
        },
    }
