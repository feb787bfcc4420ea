"""The pipeline state manager: sessions, their pipeline and service states, and the observers.

It keeps no clock and does no I/O: every event carries its time ``t`` (seconds) and every accepted
event produces one or more :class:`Transition` records, handed to each observer in order. The offline
trace and the live WebSocket broadcast are both observers. The rules live in :mod:`pipesim.state.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from pipesim.state.rules import (
    ACTIVE,
    CANCELLED_TURN,
    COMPLETE,
    CREATED,
    FAILABLE,
    IDLE,
    LIFECYCLE,
    LISTENING,
    PAUSED,
    PIPELINE,
    PIPELINE_PREREQUISITES,
    PREREQUISITES,
    PROCESSING,
    SERVICE,
    SERVICES,
    STOPPED,
    IllegalTransition,
    UnknownSession,
)

_NAN = math.nan


class Transition(NamedTuple):
    """One accepted change of a session, with the full state after it (what a wire update shows).

    A named tuple, because the model makes one per event: it is cheap to create, immutable, and it is the
    very row that :class:`pipesim.trace.Trace` stores (``value`` is the trace's column for model events).
    """

    t: float
    session_id: str
    turn_id: int
    seq: int
    event: str
    service: str | None
    status: str
    state: str
    stt: str
    llm: str
    tts: str
    buffer_size: int
    audio_quality: float
    error: str | None = None
    value: float = math.nan

    @property
    def services(self) -> dict[str, str]:
        return {"stt": self.stt, "llm": self.llm, "tts": self.tts}


Observer = Callable[[Transition], None]
#: The pipeline states that accept audio (the fast path of :meth:`PipelineStateManager.audio`).
_TAKES_AUDIO = frozenset(state for state, events in PIPELINE.items() if "audio" in events)
#: Builds a Transition from a full tuple of its fields, without the keyword handling of ``Transition(...)``.
_new_transition = tuple.__new__


class _Session:
    __slots__ = ("session_id", "status", "state", "services", "buffer_size", "audio_quality",
                 "turn_id", "retries", "seq")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.status = CREATED
        self.state = LISTENING
        self.services = dict.fromkeys(SERVICES, IDLE)
        self.buffer_size = 0
        self.audio_quality = 0.0
        self.turn_id = 0
        self.retries = dict.fromkeys(SERVICES, 0)
        self.seq = 0


class PipelineStateManager:
    """Owns every pipeline session and enforces the rules of :mod:`pipesim.state.rules`.

    ``max_retries`` is the Kafka retry budget per service and turn: the timeout after the last retry
    fails the turn.

    >>> m = PipelineStateManager()
    >>> seen = []
    >>> unsubscribe = m.subscribe(seen.append)
    >>> _ = m.create_session("s1", t=0.0); _ = m.start("s1", t=0.0)
    >>> _ = m.speech_started("s1", t=0.5); _ = m.utterance_ended("s1", t=2.5)
    >>> m.service_requested("s1", "stt", t=2.5).services
    {'stt': 'waiting', 'llm': 'idle', 'tts': 'idle'}
    >>> [tr.event for tr in seen][-2:]
    ['utterance_ended', 'service_requested']
    """

    def __init__(self, max_retries: int = 3) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self._sessions: dict[str, _Session] = {}
        self._observers: tuple[Observer, ...] = ()  # replaced, never mutated: safe to change mid-delivery

    # Observers -------------------------------------------------------------------------------------
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(transition)`` for every accepted transition; returns an unsubscribe function."""
        self._observers = (*self._observers, observer)

        def unsubscribe() -> None:
            self._observers = tuple(o for o in self._observers if o is not observer)

        return unsubscribe

    # Queries ---------------------------------------------------------------------------------------
    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    @property
    def session_ids(self) -> list[str]:
        """Every known session id, in creation order (stopped ones included until forgotten)."""
        return list(self._sessions)

    def snapshot(self, session_id: str, t: float) -> Transition:
        """The current state of a session as a record (not an event: nothing is emitted), carrying the
        ``seq`` of the last transition, so the next transition follows it by one."""
        s = self._get(session_id)
        tr = self._record(s, t, "snapshot", None, None, advance=False)
        return tr._replace(seq=s.seq - 1)  # the seq of the last transition: the state it left

    def status(self, session_id: str) -> str:
        return self._get(session_id).status

    def reserve_seq(self, session_id: str) -> int:
        """Take the session's next ``seq`` for a message that is not a transition (an admin push), so
        that the transitions after it keep counting up from there."""
        s = self._get(session_id)
        s.seq += 1
        return s.seq - 1

    def forget(self, session_id: str) -> None:
        """Drop a stopped session's record (long live runs); events for it then raise UnknownSession."""
        s = self._get(session_id)
        if s.status != STOPPED:
            raise IllegalTransition(session_id, "lifecycle", s.status, "forget", "stop the session first")
        del self._sessions[session_id]

    # Lifecycle -------------------------------------------------------------------------------------
    def create_session(self, session_id: str, t: float) -> Transition:
        """Create a session (status ``created``: it accepts only ``start`` and ``stop``)."""
        if session_id in self._sessions:
            raise IllegalTransition(session_id, "lifecycle", self._sessions[session_id].status,
                                    "create", "a session with this id exists")
        s = self._sessions[session_id] = _Session(session_id)
        return self._emit(s, t, "session_created")

    def start(self, session_id: str, t: float) -> Transition:
        """Start a created session, or resume a paused one (the seed's ``start`` control does both)."""
        s = self._get(session_id)
        resumed = s.status == PAUSED
        s.status = self._lifecycle(s, "start")
        return self._emit(s, t, "session_resumed" if resumed else "session_started")

    def pause(self, session_id: str, t: float) -> Transition:
        """Pause an active session: the turn in flight is cancelled, its audio dropped."""
        s = self._get(session_id)
        s.status = self._lifecycle(s, "pause")
        self._reset_turn(s, CANCELLED_TURN["pause"])
        s.buffer_size = 0
        return self._emit(s, t, "session_paused")

    def stop(self, session_id: str, t: float, reason: str = "stopped") -> Transition:
        """Stop a session for good: the turn in flight is cancelled; nothing is emitted after this."""
        s = self._get(session_id)
        s.status = self._lifecycle(s, "stop")
        if s.state != COMPLETE or any(v != COMPLETE for v in s.services.values()):
            self._reset_turn(s, CANCELLED_TURN["stop"])
        s.buffer_size = 0
        return self._emit(s, t, "session_stopped", error=None if reason == "stopped" else reason)

    def control(self, session_id: str, action: str, t: float) -> Transition:
        """Apply a seed ``conversation_control`` action (``start``, ``pause`` or ``stop``)."""
        handler = {"start": self.start, "pause": self.pause, "stop": self.stop}.get(action)
        if handler is None:
            raise IllegalTransition(session_id, "lifecycle", self._get(session_id).status, action,
                                    "unknown action")
        return handler(session_id, t)

    # Audio and turns -------------------------------------------------------------------------------
    def speech_started(self, session_id: str, t: float) -> Transition:
        """The user started speaking: after a completed turn, the next turn begins (listening)."""
        s = self._active(session_id, "speech_started")
        self._pipeline(s, "speech_started")
        if s.state == COMPLETE:
            self._reset_turn(s, LISTENING)
        return self._emit(s, t, "speech_started")

    def audio(self, session_id: str, t: float, buffer_size: int, audio_quality: float) -> Transition:
        """Audio arrived: ``buffer_size`` bytes are buffered, ``audio_quality`` is the running score."""
        s = self._sessions.get(session_id)
        if s is None or s.status != ACTIVE or s.state not in _TAKES_AUDIO:
            s = self._active(session_id, "audio")  # raises, naming what is wrong
            self._pipeline(s, "audio")
        if buffer_size < 0 or not 0.0 <= audio_quality <= 1.0:
            raise ValueError(f"session {session_id!r}: audio needs buffer_size >= 0 and 0 <= quality <= 1, "
                             f"got {buffer_size}, {audio_quality}")
        # int() of an int is a type call (~600 instructions, ~9 reports a turn): only for other numbers.
        s.buffer_size = buffer_size if buffer_size.__class__ is int else int(buffer_size)
        s.audio_quality = float(audio_quality)
        return self._emit(s, t, "audio")

    def utterance_ended(self, session_id: str, t: float) -> Transition:
        """End of utterance (VAD silence timeout): a new turn starts processing."""
        s = self._active(session_id, "utterance_ended")
        s.state = self._pipeline(s, "utterance_ended")
        s.turn_id += 1
        s.retries = dict.fromkeys(SERVICES, 0)
        return self._emit(s, t, "utterance_ended")

    def barge_in(self, session_id: str, t: float) -> Transition:
        """The user spoke over the bot's reply: TTS is cancelled and the session listens again."""
        s = self._active(session_id, "barge_in")
        target = self._pipeline(s, "barge_in")
        service, allowed = PIPELINE_PREREQUISITES["barge_in"]
        if s.services[service] not in allowed:
            raise IllegalTransition(session_id, service, s.services[service], "barge_in",
                                    "barge-in needs the bot to be speaking")
        self._reset_turn(s, target)
        return self._emit(s, t, "barge_in")

    def turn_failed(self, session_id: str, t: float, reason: str) -> Transition:
        """Fail the turn in flight with ``reason``: services reset, the session listens again."""
        s = self._active(session_id, "turn_failed")
        self._reset_turn(s, self._pipeline(s, "turn_failed"))
        return self._emit(s, t, "turn_failed", error=reason)

    # Services --------------------------------------------------------------------------------------
    def service_requested(self, session_id: str, service: str, t: float) -> Transition:
        """A request for ``service`` was produced (to Kafka): idle -> waiting. STT takes the audio."""
        s = self._service(session_id, service, "service_requested")
        if service == "stt":
            s.buffer_size = 0
        return self._emit(s, t, "service_requested", service)

    def service_started(self, session_id: str, service: str, t: float) -> Transition:
        """A worker started on the request: waiting -> executing."""
        s = self._service(session_id, service, "service_started")
        return self._emit(s, t, "service_started", service)

    def service_completed(self, session_id: str, service: str, t: float) -> Transition:
        """``service`` delivered its whole result; when TTS completes, the turn is complete."""
        s = self._service(session_id, service, "service_completed")
        if service == "tts":
            s.state = self._pipeline(s, "turn_completed")
        return self._emit(s, t, "service_completed", service)

    def kafka_timeout(self, session_id: str, service: str, t: float) -> Transition:
        """A Kafka request or response of ``service`` timed out: back to waiting for a retry.

        Past the retry budget the turn fails too; the returned transition is then ``turn_failed``.
        """
        s = self._get(session_id)
        retries = s.retries[service] + 1 if service in s.retries else 0
        self._service(session_id, service, "kafka_timeout")  # validates, sets waiting
        s.retries[service] = retries
        records = [self._record(s, t, "kafka_timeout", service, None)]
        if retries > self.max_retries:
            self._reset_turn(s, self._pipeline(s, "turn_failed"))
            error = f"{service}: Kafka timed out {retries} times (retry budget {self.max_retries})"
            records.append(self._record(s, t, "turn_failed", service, error))
        self._deliver(records)  # both changes are made before any observer runs
        return records[-1]

    def service_failed(self, session_id: str, service: str, t: float, reason: str) -> Transition:
        """``service`` answered with an error: the turn fails with ``service: reason``."""
        s = self._active(session_id, "service_failed")
        self._check_service_name(session_id, service, "service_failed")
        state = s.services[service]
        if state not in FAILABLE:
            raise IllegalTransition(session_id, service, str(state), "service_failed",
                                    "only a waiting or executing service can fail")
        self._reset_turn(s, self._pipeline(s, "turn_failed"))
        return self._emit(s, t, "turn_failed", service, error=f"{service}: {reason}")

    # Internals -------------------------------------------------------------------------------------
    def _get(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(session_id) from None

    @staticmethod
    def _lifecycle(s: _Session, action: str) -> str:
        target = LIFECYCLE[s.status].get(action)
        if target is None:
            raise IllegalTransition(s.session_id, "lifecycle", s.status, action)
        return target

    def _active(self, session_id: str, event: str) -> _Session:
        s = self._get(session_id)
        if s.status != ACTIVE:
            raise IllegalTransition(session_id, "lifecycle", s.status, event, "the session is not active")
        return s

    @staticmethod
    def _pipeline(s: _Session, event: str) -> str:
        target = PIPELINE[s.state].get(event)
        if target is None:
            raise IllegalTransition(s.session_id, "pipeline", s.state, event)
        return target

    def _service(self, session_id: str, service: str, event: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is None or s.status != ACTIVE:  # the common case checked inline (every service event comes here)
            s = self._active(session_id, event)  # raises, naming what is wrong
        if service not in SERVICES:
            self._check_service_name(session_id, service, event)  # raises
        if s.state != PROCESSING:
            raise IllegalTransition(session_id, service, s.services[service], event,
                                    f"the pipeline is {s.state!r}, not 'processing'")
        current = s.services[service]
        target = SERVICE[current].get(event)
        if target is None:
            raise IllegalTransition(session_id, service, current, event)
        rule = PREREQUISITES.get((service, event))
        if rule is not None and s.services[rule[0]] not in rule[1]:
            raise IllegalTransition(session_id, service, current, event,
                                    f"{rule[0]} is {s.services[rule[0]]!r}, needs {' or '.join(sorted(rule[1]))}")
        s.services[service] = target
        return s

    @staticmethod
    def _check_service_name(session_id: str, service: str, event: str) -> None:
        if service not in SERVICES:
            raise IllegalTransition(session_id, repr(service), "unknown", event,
                                    f"services are {', '.join(SERVICES)}")

    @staticmethod
    def _reset_turn(s: _Session, state: str) -> None:
        s.state = state
        s.services = dict.fromkeys(SERVICES, IDLE)

    def _emit(self, s: _Session, t: float, event: str, service: str | None = None,
              error: str | None = None) -> Transition:
        # The model's hot path (one call per transition): the record is built and handed to the observers
        # here, without the generic helpers (see :meth:`_record` and :meth:`_deliver` for what it does).
        sv = s.services
        tr = _new_transition(Transition, (float(t), s.session_id, s.turn_id, s.seq, event, service, s.status,
                                          s.state, sv["stt"], sv["llm"], sv["tts"], s.buffer_size,
                                          s.audio_quality, error, _NAN))
        s.seq += 1
        observers = self._observers
        if len(observers) == 1:
            observers[0](tr)  # the state has changed already: an observer's error is the caller's to see
        else:
            self._deliver((tr,))
        return tr

    def _deliver(self, records: list[Transition] | tuple[Transition, ...]) -> None:
        """Hand every record to every observer. An observer that raises does not keep the others from
        seeing the change (the state has changed already); the first error is raised afterwards."""
        first_error: Exception | None = None
        for tr in records:
            for observer in self._observers:
                try:
                    observer(tr)
                except Exception as exc:  # noqa: BLE001 - re-raised below, after every observer has run
                    first_error = first_error or exc
        if first_error is not None:
            raise first_error

    @staticmethod
    def _record(s: _Session, t: float, event: str, service: str | None, error: str | None,
                advance: bool = True) -> Transition:
        sv = s.services
        tr = Transition(float(t), s.session_id, s.turn_id, s.seq, event, service, s.status, s.state,
                        sv["stt"], sv["llm"], sv["tts"], s.buffer_size, s.audio_quality, error)
        if advance:
            s.seq += 1
        return tr
