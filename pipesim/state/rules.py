"""Every rule of the pipeline state machine, in one place.

Theory of operation
-------------------
A *pipeline session* has three layers of state, each a small table of ``{state: {event: new_state}}``:

1. its lifecycle (``LIFECYCLE``): created -> active <-> paused -> stopped. Only an *active* session
   accepts audio and pipeline events; pausing or stopping cancels the turn in flight.
2. its pipeline state (``PIPELINE``): listening -> processing (end of utterance) -> complete (the bot's
   reply is done) -> listening (the user speaks again). A barge-in or a failed turn returns from
   processing to listening.
3. the state of each service, STT, LLM and TTS (``SERVICE``), for the current turn: idle -> waiting
   (request queued or in Kafka) -> executing -> complete. A Kafka timeout sends a waiting or executing
   service back to waiting for a retry. Every service is reset to idle when a turn starts or ends early.

The service coordinator (``PREREQUISITES``) orders the services: LLM may be requested only once STT
has completed; TTS may be requested and may execute while the LLM still streams (its first sentence),
but TTS cannot complete before the LLM has, and the LLM cannot time out once TTS has started.

An event that no table allows raises :class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

# Lifecycle ----------------------------------------------------------------------------------------
CREATED, ACTIVE, PAUSED, STOPPED = "created", "active", "paused", "stopped"

LIFECYCLE: dict[str, dict[str, str]] = {
    CREATED: {"start": ACTIVE, "stop": STOPPED},
    ACTIVE: {"pause": PAUSED, "stop": STOPPED},
    PAUSED: {"start": ACTIVE, "stop": STOPPED},
    STOPPED: {},
}

# Pipeline ------------------------------------------------------------------------------------------
LISTENING, PROCESSING, COMPLETE = "listening", "processing", "complete"

PIPELINE: dict[str, dict[str, str]] = {
    LISTENING: {"speech_started": LISTENING, "audio": LISTENING, "utterance_ended": PROCESSING},
    PROCESSING: {"turn_completed": COMPLETE, "barge_in": LISTENING, "turn_failed": LISTENING},
    COMPLETE: {"speech_started": LISTENING},
}

# Services ------------------------------------------------------------------------------------------
IDLE, WAITING, EXECUTING = "idle", "waiting", "executing"
SERVICES = ("stt", "llm", "tts")

SERVICE: dict[str, dict[str, str]] = {
    IDLE: {"service_requested": WAITING},
    WAITING: {"service_started": EXECUTING, "kafka_timeout": WAITING},
    EXECUTING: {"service_completed": COMPLETE, "kafka_timeout": WAITING},
    COMPLETE: {},
}

# Service coordinator: (service, event) -> {other service: states it must be in} -------------------
PREREQUISITES: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    ("llm", "service_requested"): ("stt", frozenset({COMPLETE})),
    # Once TTS speaks the LLM's first phrase, the LLM's answer has arrived: it can no longer time out.
    ("llm", "kafka_timeout"): ("tts", frozenset({IDLE})),
    ("tts", "service_requested"): ("llm", frozenset({EXECUTING, COMPLETE})),
    ("tts", "service_completed"): ("llm", frozenset({COMPLETE})),
}

#: Events that need an active session and the pipeline state ``processing``.
SERVICE_EVENTS = frozenset(e for row in SERVICE.values() for e in row)


class StateError(Exception):
    """Base class of the state manager's errors."""


class UnknownSession(StateError):
    """An event named a session the manager does not know."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)  # all constructor arguments, so the error can be rebuilt from args
        self.session_id = session_id

    def __str__(self) -> str:
        return f"unknown session {self.session_id!r}"


#: The state each event asks for, to name it when the event is refused.
REQUESTED: dict[str, str] = {
    "create": CREATED, "start": ACTIVE, "pause": PAUSED, "stop": STOPPED,
    "speech_started": LISTENING, "audio": LISTENING, "utterance_ended": PROCESSING,
    "turn_completed": COMPLETE, "barge_in": LISTENING, "turn_failed": LISTENING,
    "service_requested": WAITING, "service_started": EXECUTING, "service_completed": COMPLETE,
    "kafka_timeout": WAITING, "service_failed": IDLE,
}


class IllegalTransition(StateError):
    """An event is not allowed in the current state.

    Names the session, the part of the session that refused (``lifecycle``, ``pipeline`` or a service:
    then ``service`` is set too), the state it was in and the one the event requested.
    """

    def __init__(self, session_id: str, part: str, current: str, event: str, reason: str = "") -> None:
        super().__init__(session_id, part, current, event, reason)  # rebuildable from args (SimPy does that)
        self.session_id, self.part, self.current, self.event, self.reason = session_id, part, current, event, reason
        self.service = part if part in SERVICES else None
        self.requested = REQUESTED.get(event, event)

    def __str__(self) -> str:
        text = (f"session {self.session_id!r}: {self.part} cannot go from {self.current!r} to "
                f"{self.requested!r} on {self.event}")
        return f"{text} ({self.reason})" if self.reason else text
