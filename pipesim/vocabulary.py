"""The words every part of pipesim shares, defined once: services, states, controls and message types.

The protocol's pydantic models, the state manager's rule tables, the model, the scenario schema, the
analysis and the figures all take their names from here. It imports nothing, so the clock-free state
core can use it.

>>> SERVICES
('stt', 'llm', 'tts')
>>> CLIENT_MESSAGE_TYPES
('conversation_control', 'fault_injection')
"""

from __future__ import annotations

from typing import Literal, get_args

#: The pipeline's services, in the order a turn visits them.
ServiceName = Literal["stt", "llm", "tts"]
SERVICES: tuple[str, ...] = get_args(ServiceName)

#: The seed's pipeline state, service state and control action; pipesim's session lifecycle and faults.
PipelineState = Literal["listening", "processing", "complete"]
ServiceState = Literal["idle", "waiting", "executing", "complete"]
SessionStatus = Literal["created", "active", "paused", "stopped"]
ControlAction = Literal["start", "stop", "pause"]
FaultKind = Literal["kafka_stall", "service_outage", "disconnect"]

#: Wire message types, by direction (the seed's two plus pipesim's documented extensions).
ServerMessageType = Literal["session_created", "pipeline_state_update", "session_ended", "error"]
ClientMessageType = Literal["conversation_control", "fault_injection"]
SERVER_MESSAGE_TYPES: tuple[str, ...] = get_args(ServerMessageType)
CLIENT_MESSAGE_TYPES: tuple[str, ...] = get_args(ClientMessageType)

#: Pipecat's RTVI messages pipesim's ``/rtvi`` dialect sends and understands (``pipesim/live/rtvi.py``).
RtviServerMessageType = Literal[
    "bot-ready", "error", "error-response", "server-response", "server-message", "metrics",
    "user-started-speaking", "user-stopped-speaking", "user-transcription",
    "bot-llm-started", "bot-llm-text", "bot-llm-stopped", "bot-tts-started", "bot-tts-stopped",
    "bot-started-speaking", "bot-stopped-speaking", "bot-output",
]
RtviClientMessageType = Literal["client-ready", "disconnect-bot", "send-text", "client-message"]
RTVI_SERVER_MESSAGE_TYPES: tuple[str, ...] = get_args(RtviServerMessageType)
RTVI_CLIENT_MESSAGE_TYPES: tuple[str, ...] = get_args(RtviClientMessageType)
