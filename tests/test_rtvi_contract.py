"""The ``/rtvi`` contract (``pipesim.live.rtvi_contract``) holds: every message a live RTVI session sends,
and every message the real client sent for the golden frames, validates against its JSON Schema; the
AsyncAPI document validates against the official AsyncAPI 3.0.0 schema; ``pipesim schema --dialect rtvi``
prints them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_contract import ASYNCAPI_SPEC, node_modules  # noqa: F401  (the fixture: npm ci in frontend/)
from test_rtvi import receive, rtvi_url, run, scenario, send
from test_rtvi_audio import listen
from websockets.asyncio.client import connect

from pipesim.cli import main
from pipesim.live import LiveServer
from pipesim.live.rtvi_contract import rtvi_asyncapi_document, rtvi_json_schemas
from pipesim.vocabulary import RTVI_CLIENT_MESSAGE_TYPES, RTVI_SERVER_MESSAGE_TYPES

SCHEMAS = rtvi_json_schemas()
GOLDEN = Path(__file__).parent / "data" / "rtvi_frames.json"


def _invalid(message: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMAS[message["type"]])
    return [f"{message['type']} {e.json_path}: {e.message[:120]}" for e in validator.iter_errors(message)]


def test_every_message_of_a_live_session_follows_the_schema() -> None:
    async def main_() -> list[dict[str, Any]]:
        async with LiveServer(scenario(turns=2), port=0, speed=30) as server, connect(rtvi_url(server)) as ws:
            await ws.send(b"\x22\x01")  # malformed: error
            await send(ws, "client-ready", {}, "r")
            await send(ws, "client-message", {"t": "ping", "d": [1]}, "m")
            await send(ws, "bogus", {}, "b")
            got = await receive(ws, until="error-response")
            await send(ws, "send-text", {"content": "hi"}, "t")  # may be refused (bot busy): either is fine
            return got + await receive(ws)

    messages = run(main_())
    assert {m["type"] for m in messages} == set(RTVI_SERVER_MESSAGE_TYPES)
    problems = [p for m in messages for p in _invalid(m)]
    assert not problems, "\n".join(problems[:20])


def test_the_real_clients_messages_follow_the_schema() -> None:
    frames = json.loads(GOLDEN.read_text(encoding="utf-8"))["frames"]
    sent = [json.loads(f["json"]) for f in frames if f["kind"] == "message"]
    assert {m["type"] for m in sent} <= set(RTVI_CLIENT_MESSAGE_TYPES)
    assert not [p for m in sent for p in _invalid(m)]
    assert _invalid({"label": "rtvi-ai", "type": "send-text", "data": {"content": 3}})


def test_the_asyncapi_document_validates_against_the_official_schema(node_modules: Path) -> None:  # noqa: F811
    spec = json.loads(ASYNCAPI_SPEC.read_text(encoding="utf-8"))
    errors = [f"{e.json_path}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(spec).iter_errors(rtvi_asyncapi_document())]
    assert not errors, "\n".join(errors)


def test_the_rtvi_channel_is_served_over_ws_and_over_wss() -> None:
    doc = rtvi_asyncapi_document()
    assert {name: server["protocol"] for name, server in doc["servers"].items()} == {"localhost": "ws",
                                                                                   "localhostTls": "wss"}
    assert [ref["$ref"] for ref in doc["channels"]["rtvi"]["servers"]] == ["#/servers/localhost",
                                                                          "#/servers/localhostTls"]


@pytest.mark.parametrize("fmt", ["jsonschema", "asyncapi"])
def test_the_schema_command_prints_the_rtvi_contract(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--dialect", "rtvi", "--format", fmt]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = rtvi_asyncapi_document() if fmt == "asyncapi" else rtvi_json_schemas()
    assert printed == expected


def test_the_bots_audio_frames_are_in_the_contract_and_follow_it() -> None:
    document = rtvi_asyncapi_document()
    audio = document["components"]["messages"]["BotAudio"]
    assert document["operations"]["sendBotAudio"]["action"] == "send"
    assert "BotAudio" in document["channels"]["rtvi"]["messages"] and "BotAudio" in document["info"]["description"]

    async def main_() -> list[dict[str, Any]]:
        async with LiveServer(scenario(turns=1), port=0, speed=30) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            return [e for e in await listen(ws) if e["type"] == "audio"]

    frames = run(main_())
    assert frames
    for frame in frames:
        assert f"sample_rate: {frame['rate']}, num_channels: {frame['channels']}" in audio["description"]
        assert f"`audio` {frame['bytes']:,} bytes" in audio["description"]
