"""The machine-readable contract of ``/ws``: the AsyncAPI document and the generated TypeScript types.

* The AsyncAPI document is 3.0.0, names every message of :func:`pipesim.protocol.json_schemas` with the
  right direction, is self-contained (every ``$ref`` resolves inside it), validates against the official
  AsyncAPI 3.0.0 JSON Schema (npm ``@asyncapi/specs``, locked in ``frontend/package-lock.json``), and its
  payload schemas accept what the server really sends and reject what the server would reject.
* ``frontend/src/pipesim-protocol.ts`` is exactly what ``scripts/gen-types.sh`` generates now.

The npm-based tests install ``frontend/node_modules`` with ``npm ci`` when it is missing, and are skipped
when Node.js or npm is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import frontend_node_modules

import pipesim
from pipesim.cli import main as cli_main
from pipesim.live.contract import (
    EXAMPLES,
    NAMED_ENUMS,
    asyncapi_document,
    combined_json_schema,
)
from pipesim.protocol import json_schemas, parse_message, wire_messages
from pipesim.trace import transitions
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
TYPES_FILE = FRONTEND / "src" / "pipesim-protocol.ts"
ASYNCAPI_SPEC = FRONTEND / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi_document()


def _refs(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``$ref`` in a JSON document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield path, value
            else:
                yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, f"{path}/{i}")


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (``#/a/b``); KeyError/IndexError when it does not resolve."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _payload_validator(doc: dict[str, Any], message_name: str) -> jsonschema.protocols.Validator:
    """A validator of one message's payload, resolving its ``$ref``\\ s against the whole document."""
    message = next(m for m in doc["components"]["messages"].values() if m["name"] == message_name)
    root = {"components": doc["components"], "$ref": message["payload"]["$ref"]}
    return jsonschema.Draft202012Validator(root)


# AsyncAPI document -------------------------------------------------------------------------------------
def test_document_is_asyncapi_3_for_the_ws_channel_on_port_8001(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    server = doc["servers"]["localhost"]
    assert (server["host"], server["protocol"]) == ("localhost:8001", "ws")
    tls = doc["servers"]["localhostTls"]  # pipesim serve --tls-self-signed: the same channel over wss://
    assert (tls["host"], tls["protocol"]) == ("localhost:8001", "wss")
    channel = doc["channels"]["ws"]
    assert channel["servers"] == [{"$ref": "#/servers/localhost"}, {"$ref": "#/servers/localhostTls"}]
    assert channel["address"] == "/ws"
    query = channel["bindings"]["ws"]["query"]
    assert query["type"] == "object" and "session_id" in query["properties"]
    assert "session_id" not in query.get("required", [])  # optional: plain /ws sees every session
    assert "session_id" in channel["description"]
    assert doc["info"]["version"] == pipesim.__version__


def test_every_message_type_appears_with_its_direction(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == set(json_schemas())
    assert set(SERVER_MESSAGE_TYPES) | set(CLIENT_MESSAGE_TYPES) == set(json_schemas())
    direction: dict[str, str] = {}
    for op in doc["operations"].values():
        assert _resolve(doc, op["channel"]["$ref"]) is doc["channels"]["ws"]
        for ref in op["messages"]:
            assert ref["$ref"].startswith("#/channels/ws/messages/"), "operations must use the channel's messages"
            name = _resolve(doc, _resolve(doc, ref["$ref"])["$ref"])["name"]
            assert name not in direction, f"{name} is in two operations"
            direction[name] = op["action"]
    assert direction == {**dict.fromkeys(SERVER_MESSAGE_TYPES, "send"),
                         **dict.fromkeys(CLIENT_MESSAGE_TYPES, "receive")}


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    refs = list(_refs(doc))
    assert len(refs) > 20
    for where, ref in refs:
        try:
            _resolve(doc, ref)
        except (KeyError, IndexError, ValueError):
            pytest.fail(f"{where}: $ref {ref!r} does not resolve inside the document")
    text = json.dumps(doc)
    assert "$defs" not in text, "pydantic's $defs must be hoisted into components.schemas"


def test_payload_schemas_are_the_protocol_schemas(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for type_name, original in json_schemas().items():
        ours = schemas[original["title"]]
        assert set(ours["properties"]) == set(original["properties"]), type_name
        assert ours["required"][0] == "type"  # the server refuses a message without it, and always sends it
        assert set(ours["required"]) == set(original.get("required", [])) | {"type"}
        assert ours["properties"]["type"]["const"] == type_name
        assert ours.get("additionalProperties") == original.get("additionalProperties")
    for name, values in NAMED_ENUMS.items():
        assert schemas[name]["enum"] == list(values)
    assert schemas["Services"]["properties"]["llm"] == {"$ref": "#/components/schemas/ServiceState"}


def test_examples_parse_as_the_messages_they_illustrate(doc: dict[str, Any]) -> None:
    for message in doc["components"]["messages"].values():
        (example,) = message["examples"]
        parsed = parse_message(json.dumps(example["payload"]))
        assert parsed.type == message["name"]
        _payload_validator(doc, message["name"]).validate(example["payload"])
    assert set(EXAMPLES) == set(json_schemas())


def test_payload_schemas_accept_what_the_server_sends(doc: dict[str, Any]) -> None:
    """Every wire message of a small simulated run (controls, failed turns, ends) fits the contract."""
    scn = pipesim.Scenario.model_validate({
        "name": "contract", "seed": 7,
        "sessions": {"arrivals": {"kind": "at_once", "count": 4}, "turns": 2, "scripted": [
            {"id": "ctl", "timeline": [{"at": 0, "action": "start"}, {"at": 0.5, "speak": 1.0},
                                       {"at": 1.7, "action": "pause"}, {"at": 2.5, "action": "start"},
                                       {"at": 3.0, "speak": 1.0}, {"at": 9.0, "action": "stop"}]}]},
        "kafka": {"request_timeout_s": 0.3, "max_retries": 1,
                  "outages": [{"start_s": 0.0, "end_s": 30.0, "topics": ["llm"]}]},
    })
    sent = [m for tr in transitions(pipesim.simulate(scn).trace) for m in wire_messages(tr)]
    validators = {name: _payload_validator(doc, name) for name in SERVER_MESSAGE_TYPES}
    seen = set()
    for message in sent:
        validators[message["type"]].validate(message)
        seen.add(message["type"])
    assert seen == {"session_created", "pipeline_state_update", "session_ended"}
    statuses = {m["status"] for m in sent if m["type"] == "pipeline_state_update"}
    assert {"active", "paused", "stopped"} <= statuses
    assert any(m.get("error") for m in sent if m["type"] == "pipeline_state_update"), "want a failed turn"


def test_payload_schemas_reject_what_the_server_rejects(doc: dict[str, Any]) -> None:
    control = _payload_validator(doc, "conversation_control")
    assert control.is_valid({"type": "conversation_control", "action": "start", "session_id": "a"})
    for bad in ({"action": "start", "session_id": "a"},  # no type
                {"type": "conversation_control", "action": "jump", "session_id": "a"},
                {"type": "conversation_control", "action": "start", "session_id": ""}):
        assert not control.is_valid(bad), bad
        with pytest.raises(ValueError):
            parse_message(json.dumps(bad), allowed=CLIENT_MESSAGE_TYPES)
    update = _payload_validator(doc, "pipeline_state_update")
    seed_example = {"type": "pipeline_state_update", "session_id": "s", "state": "listening",
                    "services": {"stt": "idle", "llm": "idle", "tts": "idle"},
                    "metadata": {"buffer_size": 5569, "audio_quality": 0.5708}}
    assert update.is_valid(seed_example)  # the seed's message, without any extension field
    assert not update.is_valid({**seed_example, "services": {"stt": "busy", "llm": "idle", "tts": "idle"}})
    assert not update.is_valid({**seed_example, "surprise": 1})


def test_cli_writes_the_document(tmp_path: Path, doc: dict[str, Any]) -> None:
    out = tmp_path / "asyncapi.json"
    assert cli_main(["schema", "--format", "asyncapi", "-o", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == doc


# npm: the official AsyncAPI schema and the TypeScript generator ------------------------------------------
@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``frontend/node_modules`` as ``frontend/package-lock.json`` pins it (``npm ci`` when missing/stale)."""
    return frontend_node_modules(".bin/json2ts", str(ASYNCAPI_SPEC.relative_to(FRONTEND / "node_modules")))


def test_document_validates_against_the_official_asyncapi_schema(node_modules: Path, doc: dict[str, Any]) -> None:
    spec = json.loads(ASYNCAPI_SPEC.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(spec)
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)
    broken = json.loads(json.dumps(doc))
    broken["operations"]["sendError"]["action"] = "publish"  # AsyncAPI 2's word: not valid in 3.0.0
    assert not validator.is_valid(broken)


def test_typescript_types_are_up_to_date(node_modules: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipesim-protocol.ts"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gen-types.sh"), str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    generated = out.read_text(encoding="utf-8")
    assert generated == TYPES_FILE.read_text(encoding="utf-8"), (
        "frontend/src/pipesim-protocol.ts is out of date with pipesim/protocol.py: run scripts/gen-types.sh "
        "and commit the result")
    for name in ("PipelineStateUpdate", "SessionCreated", "SessionEnded", "ErrorMessage", "ConversationControl",
                 "FaultInjection", "Services", "Metadata"):
        assert f"export interface {name} {{" in generated, name
    for name in ("PipesimMessage", "ServerMessage", "ClientMessage", *NAMED_ENUMS):
        assert f"export type {name} =" in generated, name
    assert 'type: "pipeline_state_update";' in generated  # required discriminant, so `switch (msg.type)` works
    assert "[k: string]: unknown" not in generated


def test_combined_schema_titles_every_definition() -> None:
    schema = combined_json_schema()
    assert schema["title"] == "PipesimMessage"
    for name, definition in schema["$defs"].items():
        assert definition["title"] == name
    for where, ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"], where
