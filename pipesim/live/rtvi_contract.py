"""The ``/rtvi`` contract: JSON Schemas of the RTVI messages pipesim sends and understands, and an AsyncAPI
3.0.0 document of the channel (``pipesim schema --dialect rtvi [--format asyncapi]``).

Written from Pipecat's RTVI 2.1.0 models (``pipecat/processors/frameworks/rtvi/models.py``) for the
subset pipesim speaks (:data:`~pipesim.vocabulary.RTVI_SERVER_MESSAGE_TYPES`,
:data:`~pipesim.vocabulary.RTVI_CLIENT_MESSAGE_TYPES`); ``tests/test_rtvi_contract.py`` checks every
message of a live session against them and the document against the official AsyncAPI schema.

>>> schemas = rtvi_json_schemas()
>>> schemas["bot-ready"]["required"]
['label', 'type', 'id', 'data']
>>> rtvi_asyncapi_document()["channels"]["rtvi"]["address"]
'/rtvi'
"""

from __future__ import annotations

from typing import Any

from pipesim import __version__
from pipesim.live.bot_audio import FRAME_S, FRAME_SAMPLES, NUM_CHANNELS, SAMPLE_RATE
from pipesim.live.rtvi_audio import LEAD_S
from pipesim.vocabulary import RTVI_CLIENT_MESSAGE_TYPES, RTVI_SERVER_MESSAGE_TYPES

_STR: dict[str, Any] = {"type": "string"}
_NUMBER: dict[str, Any] = {"type": "number"}
_METRIC = {"type": "array", "items": {"type": "object", "required": ["processor", "value"],
                                      "properties": {"processor": _STR, "value": _NUMBER}}}
_TEXT = {"type": "object", "required": ["text"], "properties": {"text": _STR}}

#: ``data`` of each message (None: the message has no ``data``), whether it carries the request's ``id``,
#: and what it means.
_MESSAGES: dict[str, tuple[dict[str, Any] | None, bool, str]] = {
    "bot-ready": ({"type": "object", "required": ["version"], "properties": {
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "about": {"type": "object", "properties": {"library": _STR, "library_version": _STR,
                                                   "session_id": _STR}}}},
        True, "Answers client-ready (same id): the bot is ready; `about.session_id` names the model session."),
    "error": ({"type": "object", "required": ["error", "fatal"], "properties": {
        "error": _STR, "fatal": {"type": "boolean", "const": False}}},
        False, "A failed turn, or a malformed frame; never fatal (the session goes on)."),
    "error-response": ({"type": "object", "required": ["error"], "properties": {"error": _STR}},
                       True, "A client message that could not be honoured (same id)."),
    "server-response": ({"type": "object", "required": ["t", "d"], "properties": {"t": _STR, "d": {
        "type": "object", "required": ["received", "session_id", "status", "state"], "properties": {
            "received": {}, "session_id": _STR, "status": _STR, "state": _STR}}}},
        True, "Answers client-message (same id and t): what was received, and the session's state."),
    "server-message": ({"type": "object", "required": ["type", "session_id"], "properties": {
        "type": {"enum": ["session_created", "pipeline_state_update", "session_ended"]}, "session_id": _STR}},
        False, "The seed protocol's own message for every transition (see the `/ws` contract)."),
    "metrics": ({"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
        "ttfb": _METRIC, "processing": _METRIC}}, False, "Seconds, per service (`processor`: stt, llm, tts)."),
    "user-started-speaking": (None, False, "The simulated user starts speaking."),
    "user-stopped-speaking": (None, False, "The simulated user stops speaking."),
    "user-transcription": ({"type": "object", "required": ["text", "user_id", "timestamp", "final"],
                            "properties": {"text": _STR, "user_id": _STR, "timestamp": _STR,
                                           "final": {"type": "boolean"}}},
                           False, "Final transcript: synthetic words, or the send-text content."),
    "bot-llm-started": (None, False, "The LLM starts on the turn."),
    "bot-llm-text": (_TEXT, False, "Streamed reply text (synthetic): the first phrase, then the rest."),
    "bot-llm-stopped": (None, False, "The LLM is done (or was cut off)."),
    "bot-tts-started": (None, False, "TTS starts on the reply."),
    "bot-tts-stopped": (None, False, "TTS is done (or was cut off)."),
    "bot-started-speaking": (None, False, "The reply's first audio."),
    "bot-stopped-speaking": (None, False, "The reply's playback ended (or was interrupted)."),
    "bot-output": ({"type": "object", "required": ["text", "aggregated_by", "spoken_status"], "properties": {
        "text": _STR, "aggregated_by": _STR, "segment_id": {"type": "integer"}, "will_be_spoken": {"type": "boolean"},
        "spoken_status": {"enum": ["new", "in-progress", "completed"]},
        "spoken_progress": {"type": "object", "properties": {"accumulated_text": _STR, "remaining_text": _STR}}}},
        False, "The whole reply: `new` at first audio, `completed` when spoken."),
    "client-ready": ({"type": "object"}, True, "Start: the server creates the session and answers bot-ready."),
    "disconnect-bot": ({"type": "object"}, False, "Stop the session; the server closes the socket (1000)."),
    "send-text": ({"type": "object", "required": ["content"], "properties": {
        "content": _STR, "options": {"type": "object"}}}, False, "The user speaks now (a new turn)."),
    "client-message": ({"type": "object", "required": ["t"], "properties": {"t": _STR, "d": {}}},
                       True, "A request; answered by server-response or error-response (same id)."),
}


def rtvi_json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per RTVI message type of the ``/rtvi`` channel, both directions."""
    out = {}
    for type_name in (*RTVI_SERVER_MESSAGE_TYPES, *RTVI_CLIENT_MESSAGE_TYPES):
        data, with_id, description = _MESSAGES[type_name]
        properties: dict[str, Any] = {"label": {"const": "rtvi-ai"}, "type": {"const": type_name}, "id": _STR}
        required = ["label", "type", *(["id"] if with_id and type_name in RTVI_SERVER_MESSAGE_TYPES else [])]
        if data is not None:
            properties["data"] = data
            required.append("data")
        out[type_name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": type_name,
                          "description": description, "type": "object", "required": required,
                          "properties": properties,
                          **({"additionalProperties": False} if type_name in RTVI_SERVER_MESSAGE_TYPES else {})}
    return out


_CHANNEL_DESCRIPTION = """\
Pipecat's RTVI (protocol 2.1.0), for `@pipecat-ai/client-js` with `@pipecat-ai/websocket-transport`.
Every message is one **binary** WebSocket frame: a protobuf `pipecat.Frame` whose field 4 (`message`)
holds a `MessageFrame` whose field 1 (`data`) is the JSON envelope below as a string. Microphone audio
arrives as `Frame.audio` (field 2, 16-bit PCM) and is dropped, unless the server hears it
(`pipesim serve --user-audio vad`): then the user's utterances begin and end with the voice in it, and
`send-text` is refused. The bot's audio goes out as `Frame.audio` while it speaks (`BotAudio`). One socket is
one model session: `client-ready` creates it from the scenario's template (answered by `bot-ready` with the
same `id`); closing the socket or `disconnect-bot` stops it. Transcripts, LLM text and the bot's voice are
synthetic. The same access checks as `/ws` apply; the handshake declines permessage-deflate.
"""

#: The bot's audio: no RTVI message, a frame of the transport (``Frame.audio``, field 2).
BOT_AUDIO: dict[str, Any] = {
    "name": "bot-audio", "title": "bot audio", "contentType": "application/x-protobuf",
    "summary": "The bot's voice, from bot-started-speaking to bot-stopped-speaking, in real time.",
    "description": (
        f"`pipecat.Frame{{audio: AudioRawFrame{{name: \"audio\", audio, sample_rate: {SAMPLE_RATE}, "
        f"num_channels: {NUM_CHANNELS}}}}}` (`id` 0 and no `pts`, as the JS transport writes it), `audio` "
        f"{FRAME_SAMPLES * 2:,} bytes: {FRAME_S * 1000:.0f} ms of 16-bit little-endian PCM, synthetic and "
        f"speech-like (syllables following the reply's words). Sent in real time, at most "
        f"{(LEAD_S + FRAME_S) * 1000:.0f} ms ahead of what the client has played; at `--speed` S a frame "
        f"holds S times as much speech (fast-forwarded). Nothing more is sent once the bot stops (playback "
        f"done, a barge-in, a pause). Off with `pipesim serve --no-bot-audio`."),
    "payload": {"type": "string", "format": "binary",
                "description": "The protobuf bytes of one `pipecat.Frame` holding an `AudioRawFrame`."},
}


def rtvi_asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the ``/rtvi`` channel (payloads: :func:`rtvi_json_schemas`)."""
    schemas = rtvi_json_schemas()
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for type_name, schema in schemas.items():
        msg_id = type_name.title().replace("-", "")
        payload = {k: v for k, v in schema.items() if k != "$schema"}
        messages[msg_id] = {"name": type_name, "title": type_name, "summary": schema["description"],
                            "contentType": "application/x-protobuf", "payload": payload}
        action = "send" if type_name in RTVI_SERVER_MESSAGE_TYPES else "receive"
        operations[f"{action}{msg_id}"] = {"action": action, "channel": {"$ref": "#/channels/rtvi"},
                                           "summary": schema["description"],
                                           "messages": [{"$ref": f"#/channels/rtvi/messages/{msg_id}"}]}
    messages["BotAudio"] = BOT_AUDIO
    operations["sendBotAudio"] = {"action": "send", "channel": {"$ref": "#/channels/rtvi"},
                                  "summary": BOT_AUDIO["summary"],
                                  "messages": [{"$ref": "#/channels/rtvi/messages/BotAudio"}]}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "pipesim RTVI dialect (Pipecat clients)", "version": __version__,
                 "description": _CHANNEL_DESCRIPTION},
        "servers": {"localhost": {"host": "localhost:8001", "protocol": "ws",
                                  "description": "`pipesim serve`, the mock backend."},
                    "localhostTls": {"host": "localhost:8001", "protocol": "wss",
                                     "description": "`pipesim serve --tls-self-signed` (or `--tls-cert` and "
                                                    "`--tls-key`): the same over TLS."}},
        "channels": {"rtvi": {"address": "/rtvi", "title": "RTVI", "description": _CHANNEL_DESCRIPTION,
                              "servers": [{"$ref": "#/servers/localhost"}, {"$ref": "#/servers/localhostTls"}],
                              "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages}}},
        "operations": operations,
        "components": {"messages": messages},
    }
