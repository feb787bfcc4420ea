"""The wire protocol: the seed's messages, field for field, and clear errors for bad input."""

import json

import jsonschema
import pytest

from pipesim.protocol import (
    ConversationControl,
    PipelineStateUpdate,
    ProtocolError,
    dumps,
    json_schemas,
    parse_message,
    wire_messages,
)
from pipesim.state import PipelineStateManager

# Copied verbatim from the production orchestrator's protocol ("Message Protocol"): TypeScript object
# literals, with the union types replaced by one of their values.
SEED_UPDATE = """{
  type: 'pipeline_state_update',
  session_id: 'session_1753677151897_nx12ig45v',
  state: 'listening',
  services: {
    stt: 'idle',
    llm: 'idle',
    tts: 'idle'
  },
  metadata: {
    buffer_size: 5569,
    audio_quality: 0.5708
  }
}"""
SEED_CONTROL = """{
  type: 'conversation_control',
  action: 'start',
  session_id: 'session_1753677151897_nx12ig45v'
}"""


def ts_literal_to_json(text: str) -> str:
    """Quote the bare keys and swap the single quotes of the seed's TypeScript literals."""
    import re

    return re.sub(r"(\w+):", r'"\1":', text.replace("'", '"'))


@pytest.mark.parametrize("literal, model", [(SEED_UPDATE, PipelineStateUpdate), (SEED_CONTROL, ConversationControl)])
def test_seed_messages_parse_and_round_trip(literal, model):
    raw = ts_literal_to_json(literal)
    msg = parse_message(raw)
    assert isinstance(msg, model)
    seed = json.loads(raw)
    dumped = json.loads(dumps(msg))
    # Every seed field comes back with the seed's value; extensions are only added (as null).
    for key, value in seed.items():
        assert dumped[key] == value
    assert {k for k, v in dumped.items() if k not in seed} <= {
        "timestamp", "seq", "turn_id", "event", "status", "error"}
    assert parse_message(dumps(msg)) == msg


@pytest.mark.parametrize("state", ["listening", "processing", "complete"])
@pytest.mark.parametrize("service_state", ["idle", "waiting", "executing", "complete"])
def test_every_seed_value_is_accepted(state, service_state):
    msg = json.loads(ts_literal_to_json(SEED_UPDATE))
    msg["state"] = state
    msg["services"] = dict.fromkeys(("stt", "llm", "tts"), service_state)
    assert parse_message(json.dumps(msg)).state == state


@pytest.mark.parametrize("action", ["start", "stop", "pause"])
def test_every_seed_action_is_accepted(action):
    assert parse_message(json.dumps({"type": "conversation_control", "action": action,
                                     "session_id": "x"})).action == action


@pytest.mark.parametrize("raw, expected", [
    ("{not json", "invalid JSON at line 1 column 2"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('{"action": "start"}', "no 'type' field"),
    ('{"type": "hello"}', "unknown message type 'hello'"),
    ('{"type": "conversation_control", "session_id": "a"}', "conversation_control.action: required field is missing"),
    ('{"type": "conversation_control", "action": "jump", "session_id": "a"}',
     "conversation_control.action: must be one of 'start', 'stop' or 'pause', got 'jump'"),
    ('{"type": "pipeline_state_update", "session_id": "a", "state": "listening", '
     '"services": {"stt": "idle", "llm": "idle", "tts": "busy"}, "metadata": {"buffer_size": 1, "audio_quality": 2}}',
     "pipeline_state_update.services.tts: must be one of"),
    (b"\xff\xfe", "not UTF-8"),
    ('{"type": "conversation_control", "n": ' + "9" * 5000 + "}", "an integer of 5000 digits (the limit is 640)"),
    ("[" * 50_000 + "]" * 50_000, "nested deeper than 32 levels"),
    ('{"type": "x' + "y" * 10_000 + '"}', "unknown message type 'xyyy"),
])
def test_bad_messages_say_what_is_wrong(raw, expected):
    with pytest.raises(ProtocolError, match=None) as info:
        parse_message(raw)
    assert expected in str(info.value)
    assert len(str(info.value)) < 300  # names the bad value without echoing it whole


def test_quality_out_of_range_names_field_and_value():
    raw = ts_literal_to_json(SEED_UPDATE).replace("0.5708", "1.5")
    with pytest.raises(ProtocolError, match=r"metadata.audio_quality: .*1.5"):
        parse_message(raw)


def test_allowed_restricts_types():
    raw = ts_literal_to_json(SEED_UPDATE)
    with pytest.raises(ProtocolError, match="unknown message type 'pipeline_state_update'"):
        parse_message(raw, allowed=("conversation_control",))


def test_wire_messages_of_a_session_validate_against_models_and_schema():
    m = PipelineStateManager()
    sent: list[dict] = []
    m.subscribe(lambda tr: sent.extend(wire_messages(tr)))
    m.create_session("s", 0.0)
    m.start("s", 0.0)
    m.speech_started("s", 0.1)
    m.audio("s", 0.5, 3200, 0.61)
    m.utterance_ended("s", 1.0)
    for svc in ("stt", "llm"):
        m.service_requested("s", svc, 1.0)
        m.service_started("s", svc, 1.1)
        if svc == "stt":
            m.service_completed("s", svc, 1.2)
    m.service_requested("s", "tts", 1.3)
    m.service_started("s", "tts", 1.4)
    m.service_completed("s", "llm", 1.5)
    m.service_completed("s", "tts", 2.0)
    m.stop("s", 3.0)
    schemas = json_schemas()
    assert [msg["type"] for msg in sent][0] == "session_created"
    assert [msg["type"] for msg in sent][-2:] == ["pipeline_state_update", "session_ended"]
    for msg in sent:
        jsonschema.validate(msg, schemas[msg["type"]])
        assert parse_message(dumps(msg)).model_dump(mode="json") == msg
    updates = [msg for msg in sent if msg["type"] == "pipeline_state_update"]
    assert [u["seq"] for u in updates] == list(range(1, len(updates) + 1))
    assert [msg["seq"] for msg in sent] == list(range(len(sent)))  # session_ended has a seq of its own
    assert updates[-2]["state"] == "complete" and updates[-2]["services"]["tts"] == "complete"


def test_schema_command_prints_every_message(capsys):
    from pipesim.cli import main

    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"pipeline_state_update", "conversation_control", "session_created",
                            "session_ended", "error", "fault_injection"}
    assert printed["pipeline_state_update"]["properties"]["state"]["enum"] == ["listening", "processing", "complete"]
