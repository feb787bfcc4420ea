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

An event that no table allows raises :class:`IllegalTransition`, changes nothing and uses no ``seq``.

Special cases (each is applied by :class:`~pipesim.state.PipelineStateManager`, in one place):

* Every event but the lifecycle ones needs an *active* session; service events also need the pipeline
  to be *processing*.
* ``utterance_ended`` starts a new turn: ``turn_id`` + 1, the retry counters back to 0.
* ``speech_started`` after a completed turn resets the services to idle (the next turn begins).
* ``service_requested`` for STT hands the buffered audio over (``buffer_size`` 0).
* ``service_completed`` of TTS completes the turn (``PIPELINE``'s ``turn_completed``).
* ``kafka_timeout`` past the retry budget (``max_retries`` per service and turn) fails the turn as well:
  two transitions, both made before any observer sees either.
* ``service_failed`` is accepted from ``FAILABLE`` states and fails the turn with ``"service: reason"``.
* ``barge_in`` needs ``PIPELINE_PREREQUISITES``; it cancels the reply (services idle).
* ``pause`` and ``stop`` cancel the turn in flight (``CANCELLED_TURN``) and drop the buffered audio.
"""

from __future__ import annotations

from pipesim.errors import IllegalTransition, StateError, UnknownSession
from pipesim.vocabulary import SERVICES

__all__ = ["SERVICES", "IllegalTransition", "StateError", "UnknownSession"]  # re-exported for the manager

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

# Rules that are not a state's own table -----------------------------------------------------------
#: A pipeline event that needs a service in given states: a barge-in needs the bot to be speaking.
PIPELINE_PREREQUISITES: dict[str, tuple[str, frozenset[str]]] = {
    "barge_in": ("tts", frozenset({EXECUTING})),
}

#: The states in which a service may answer with an error (``service_failed``); the turn then fails.
FAILABLE: frozenset[str] = frozenset({WAITING, EXECUTING})

#: The pipeline state a control that cancels the turn in flight leaves behind (services go idle). A stop
#: after a turn that had completed keeps it as it was, so a client of the seed alone sees a finished session.
CANCELLED_TURN: dict[str, str] = {"pause": LISTENING, "stop": COMPLETE}

#: The state each event asks for, to name it when the event is refused.
REQUESTED: dict[str, str] = {
    "create": CREATED, "start": ACTIVE, "pause": PAUSED, "stop": STOPPED,
    "speech_started": LISTENING, "audio": LISTENING, "utterance_ended": PROCESSING,
    "turn_completed": COMPLETE, "barge_in": LISTENING, "turn_failed": LISTENING,
    "service_requested": WAITING, "service_started": EXECUTING, "service_completed": COMPLETE,
    "kafka_timeout": WAITING, "service_failed": IDLE,
}
IllegalTransition.requested_states.update(REQUESTED)

