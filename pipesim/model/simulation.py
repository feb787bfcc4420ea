"""The SimPy model of the whole pipeline, driving the real state manager.

One generator per actor, in SimPy's style: a user per session (speaks, waits, speaks again), a turn
(STT, then LLM streaming into TTS), the services as ``simpy.Resource`` pools, Kafka in closed form.
The model never reads a wall clock and does no I/O: offline, ``env.run()`` goes as fast as it can;
live, :mod:`pipesim.live` steps the same environment in real time and calls :meth:`Simulation.control`.

Cancelling (pause, stop, barge-in, a failed turn) needs no SimPy interrupts: every process belongs to a
session *epoch* or a turn, and when it wakes into an epoch or turn that is over it returns quietly. Queued
requests of a cancelled turn are withdrawn and its workers released at once.

>>> from pipesim.scenario import Scenario
>>> sim = Simulation(Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 3}}}))
>>> sim.run()
>>> sim.trace.n_turns >= 15
True
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import simpy

from pipesim.model.budget import check_budget
from pipesim.model.kafka import KafkaBroker
from pipesim.model.streams import Streams
from pipesim.scenario import MAX_UTTERANCE_S, AtOnce, Poisson, Ramp, Scenario, ScriptedSession
from pipesim.state import IllegalTransition, PipelineStateManager, Transition, UnknownSession
from pipesim.state.rules import ACTIVE, EXECUTING, PROCESSING, STOPPED
from pipesim.trace import TURN_COLUMNS, Trace
from pipesim.vocabulary import SERVICES

_NAN = math.nan
# The model reads the clock as ``env._now``, the attribute SimPy's ``Environment.now`` property returns: ~70
# reads a turn, each a Python-level property call otherwise (~600 instructions, about 3% of a turn). Likewise
# ``event._value is _PENDING`` is what ``not event.triggered`` returns (~10 a turn). Only on the per-turn paths;
# SimPy's major version is pinned for them (pyproject.toml).
_PENDING = simpy.events.PENDING
#: A turn record's column index by name: the model writes ``turn.rec[_TURN_INDEX[name]]`` directly.
_TURN_INDEX = {name: i for i, name in enumerate(TURN_COLUMNS)}
#: (kafka, queue, service, retry, timeouts) column indices of each service's stage in a turn's record.
_STAGE_INDEX = {name: tuple(_TURN_INDEX[f"{name}_{part}"]
                            for part in ("kafka", "queue", "service", "retry", "timeouts"))
                for name in SERVICES}


def _empty_turn() -> list[Any]:
    """A turn's record before anything happened: NaN, no error, no timeouts, no bytes, no busy time."""
    rec: list[Any] = [_NAN] * len(TURN_COLUMNS)
    rec[_TURN_INDEX["error"]] = None
    for name in ("stt_timeouts", "llm_timeouts", "tts_timeouts", "audio_bytes"):
        rec[_TURN_INDEX[name]] = 0
    for name in SERVICES:
        rec[_TURN_INDEX[f"{name}_busy"]] = 0.0
    return rec


_EMPTY_TURN = _empty_turn()
#: np.exp overflows a float64 above ~709.78; below this bound no chunk's quality needs np.errstate.
_EXP_SAFE = 709.0
_max, _cumsum = np.maximum.reduce, np.add.accumulate


def _running_quality(sums: np.ndarray, chunks: int) -> float:
    """The running quality after ``chunks`` chunks, from the running sums of the chunks' qualities: their
    mean rounded to 4 places, the same bits as numpy's ``round(sums / counts, 4)`` over the whole array
    (``rint(x * 1e4) / 1e4``: each step an IEEE operation on one double; Python's ``round`` rounds half to
    even as ``rint`` does, and the integer it returns is exact). ``_AudioReports.report`` has it inline.

    >>> sums = np.add.accumulate(np.array([0.1, 0.25, 0.123456]))
    >>> [_running_quality(sums, k) for k in (1, 2, 3)] == np.round(sums / np.arange(1.0, 4.0), 4).tolist()
    True
    """
    return round(sums.item(chunks - 1) / chunks * 1e4) / 1e4


#: Python's cyclic garbage collector during an offline run (see :func:`_rare_garbage_collection`).
RUN_GC_THRESHOLD = (100_000, 20, 100)


@contextmanager
def _rare_garbage_collection() -> Iterator[None]:
    """Run the cyclic garbage collector rarely while the model runs, then as before.

    The model frees almost everything by reference counting (a run leaves about one cyclic object per
    turn, if any), but it keeps every trace row alive: with Python's default thresholds, the collector
    walks the whole growing trace again and again, about a third of the CPU time of a 5,000-session run,
    and a share that grows with the run. Collections 140 times rarer still free the few cycles.
    """
    before = gc.get_threshold()
    gc.set_threshold(*RUN_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class _Work(NamedTuple):
    """What a worker does with a request: time to its first response, how long it stays busy, its error
    (None: it answers), and for the LLM the time per token after the first."""

    first_response: float
    busy: float
    error: str | None
    per_token: float = 0.0


@dataclass(slots=True, eq=False)  # hashed by identity: the open requests are a dict of them
class _Job:
    """One request sent to a service (an attempt): in Kafka, then in the consumer's queue (``req``), then on
    a worker until ``release_at``; its row of the requests table is written when it is over."""

    name: str
    session_id: str
    turn_id: int
    attempt: int
    req: simpy.resources.resource.Request | None = None
    enqueued: float = math.nan
    started: float = math.nan
    release_at: float = math.nan
    outcome: str | None = None  # once known (see pipesim.trace.REQUEST_OUTCOMES)


class _Turn:
    """One user turn in flight: its record, its resource requests and the events that join its parts."""

    __slots__ = ("turn_id", "rec", "requests", "first_sentence", "llm_done", "llm_finished", "finished", "done",
                 "tokens", "row")

    def __init__(self, env: simpy.Environment, session_id: str, turn_id: int) -> None:
        self.turn_id = turn_id
        self.rec: list[Any] = _EMPTY_TURN.copy()
        self.rec[0], self.rec[1] = session_id, turn_id
        self.requests: list[_Job] = []  # the requests of the attempts in flight (cancelled with the turn)
        self.first_sentence = env.event()
        # TTS waits for the LLM's last token only when the audio ends first: the event is made then (an
        # event nobody waits for still costs a step of the event loop).
        self.llm_done: simpy.Event | None = None
        self.llm_finished = False
        self.finished = env.event()
        self.done = False
        self.tokens = 0
        self.row: int | None = None  # index of the turn's row in the trace, once written


class _AudioReports:
    """The running audio reports of one utterance, as a chain of timeout callbacks: the report at
    ``t0 + k * interval`` tells the state manager how many bytes are buffered and the running quality,
    then schedules the next report (no process step per report: they are about half of all transitions).

    The last report schedules the end of speech and hands it the callbacks of ``spoken``, the event the
    user's process waits on: the process wakes at that timeout, whose place among simultaneous events (a
    scripted step at the same round time, say) is the one it had when the process scheduled it itself.
    When the utterance is cancelled the chain stops and the process is never woken (nothing waits on it).
    """

    __slots__ = ("sim", "session", "epoch", "t0", "duration", "n_chunks", "sums", "k", "spoken")

    def __init__(self, sim: Simulation, session: _Session, epoch: int, t0: float, duration: float,
                 n_chunks: int, sums: np.ndarray, spoken: simpy.Event) -> None:
        self.sim, self.session, self.epoch, self.t0 = sim, session, epoch, t0
        self.duration, self.n_chunks, self.sums, self.k = duration, n_chunks, sums, 1
        self.spoken = spoken

    def report(self, _event: simpy.Event) -> None:
        """One report (a timeout's callback: a bound method, cheaper to call than an instance's ``__call__``)."""
        s, sim = self.session, self.sim
        if s.epoch != self.epoch:  # paused, stopped or barged over: the utterance is gone
            # Its process would wait on ``spoken`` for ever, in a cycle with it (a stopped session's streams
            # kept until a full collection): dropping its callback lets reference counting free both.
            self.spoken.callbacks.clear()
            return
        now, t0 = sim.env._now, self.t0
        chunks = min(self.n_chunks, int((now - t0) / sim._chunk_s + 1e-9))
        if chunks:
            quality = round(self.sums.item(chunks - 1) / chunks * 1e4) / 1e4  # see _running_quality
            sim.manager.audio(s.id, now, chunks * sim._chunk_bytes, quality)
        self.k += 1
        at = self.k * sim._interval
        if at < self.duration:
            sim.env.timeout(t0 + at - now).callbacks.append(self.report)
        else:
            end = sim.env.timeout(t0 + self.duration - now)
            end.callbacks.extend(self.spoken.callbacks)  # the user's process, waiting on ``spoken``
            self.spoken.callbacks.clear()


class _Heard:
    """An utterance of a real voice (live: a microphone): it ends when the live side says so, not after a drawn
    duration. ``ended`` is the event the user's process waits on; the audio it carried comes with it."""

    __slots__ = ("ended", "audio_bytes", "quality")

    def __init__(self, ended: simpy.Event) -> None:
        self.ended, self.audio_bytes, self.quality = ended, 0, 0.0


class _Session:
    """The model's side of one session: its random streams, progress and the turn in flight. A *voice*
    session's user is a real voice (:meth:`Simulation.voice_started`): it has no schedule of its own."""

    __slots__ = ("id", "script", "epoch", "turns_done", "repeats", "n_turns", "snr_db", "turn", "draw",
                 "user_rng", "services_rng", "ended", "voice", "heard")

    def __init__(self, sim: Simulation, session_id: str, script: ScriptedSession | None) -> None:
        scn, streams = sim.scenario, sim.streams
        self.id, self.script = session_id, script
        self.epoch, self.turns_done, self.repeats = 0, 0, 0
        self.turn: _Turn | None = None
        self.ended = False
        self.voice = False
        self.heard: _Heard | None = None  # a voice session's utterance in progress
        self.user_rng = streams.generator(session_id, "user")
        u, sv, q = scn.sessions, scn.services, scn.quality
        rngs = {name: streams.generator(session_id, name) for name in (*SERVICES, "kafka")}
        self.services_rng = rngs
        # One sampler per quantity, each drawing its stream in blocks (see pipesim.distributions).
        self.draw: dict[str, Callable[[], float]] = {
            "first_speech": u.first_speech_delay_s.sampler(self.user_rng),
            "utterance": u.utterance_s.sampler(self.user_rng),
            "eou": u.end_of_utterance_delay_s.sampler(self.user_rng),
            "think": u.think_time_s.sampler(self.user_rng),
            "barge_after": u.barge_in_after_s.sampler(self.user_rng),
            "stt": sv.stt.latency_s.sampler(rngs["stt"]),
            "ttft": sv.llm.ttft_s.sampler(rngs["llm"]),
            "per_token": sv.llm.per_token_s.sampler(rngs["llm"]),
            "tokens": sv.llm.tokens.sampler(rngs["llm"]),
            "ttfb": sv.tts.ttfb_s.sampler(rngs["tts"]),
            "kafka": scn.kafka.latency_s.sampler(rngs["kafka"]),
        }
        if script is None:
            self.n_turns = max(1, round(u.turns.sampler(self.user_rng)()))
            self.snr_db = q.snr_mean_db + q.snr_user_sd_db * float(self.user_rng.standard_normal())
        else:
            self.n_turns = 0
            self.snr_db = q.snr_mean_db if script.snr_db is None else script.snr_db


class Simulation:
    """The pipeline model for one scenario and seed, on a SimPy environment.

    ``run()`` simulates offline. The live server uses ``env``, :meth:`control` and :meth:`inject_fault`.
    Everything that happens is in :attr:`trace`; :attr:`manager` is the real state manager.

    >>> from pipesim.scenario import Scenario
    >>> sim = Simulation(Scenario(), live=True)
    >>> sim.control("abc", "start").status
    'active'
    """

    def __init__(self, scenario: Scenario, seed: int | None = None, env: simpy.Environment | None = None,
                 live: bool = False, trace_limit: int | None = None, trace_out: str | Path | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else int(seed)
        self.env = env or simpy.Environment()
        self.live = live
        self.streams = Streams(self.seed)
        self.manager = PipelineStateManager(max_retries=scenario.kafka.max_retries)
        # trace_limit: keep only the most recent events (the live server); trace_out: stream it to Parquet.
        self.trace = Trace({"scenario": scenario.name, "seed": self.seed}, sink=trace_out, limit=trace_limit)
        self.manager.subscribe(self.trace.on_transition)
        self.kafka = KafkaBroker(scenario, self.streams.generator("kafka-broker"), self.trace.kafka_window)
        self.pools = {name: simpy.Resource(self.env, getattr(scenario.services, name).capacity)
                      for name in SERVICES}
        # What a service sample reads, looked up once: a pool's users and queue are lists SimPy changes in place
        # (len(users) is what Resource.count returns), its capacity never changes.
        self._pool_state = {name: (pool.users, pool.queue, pool.capacity) for name, pool in self.pools.items()}
        self._service_sample = self.trace.service_sample
        self._add_request = self.trace.add_request
        #: Requests sent and not over yet, in the order they were sent (a dict: an ordered set).
        self._open_requests: dict[_Job, None] = {}
        self.sessions: dict[str, _Session] = {}
        self.expected_sessions = self._count_expected()
        self.on_session_end: Callable[[str], None] | None = None
        cfg = scenario.audio
        self._chunk_s, self._chunk_bytes, self._interval = cfg.chunk_s, cfg.chunk_bytes, cfg.metadata_interval_s
        self._started = False
        self._horizon = math.inf  # offline: where run() stops; arrivals are not drawn past it
        self._forgotten: set[str] = set()  # client-created ids of forgotten sessions: never created again

    # Public API ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Schedule the scenario's arrivals and scripted sessions (once)."""
        if self._started:
            return
        self._started = True
        arrivals = self.scenario.sessions.arrivals
        if isinstance(arrivals, AtOnce):
            for i in range(arrivals.count):
                self._spawn(self._session_id(i))
        else:
            self.env.process(self._arrivals())
        for script in self.scenario.sessions.scripted:
            self.env.process(self._script(script))

    def run(self, until: float | None = None, memory_limit: int | None = None) -> None:
        """Run offline, as fast as possible, until ``until`` (default: the scenario's ``duration_s``, or
        when nothing is left to happen).

        Before the first run, refuses (:class:`~pipesim.scenario.ScenarioError`) a scenario whose run
        would need more than ``memory_limit`` bytes (default: see
        :func:`pipesim.model.budget.default_memory_limit`), estimated from its numbers.
        """
        horizon = until if until is not None else self.scenario.duration_s
        if not self._started:
            check_budget(self.scenario, horizon, memory_limit, streaming=self.trace.sink is not None)
        self._horizon = self.kafka.horizon = math.inf if horizon is None else horizon
        self.start()
        with _rare_garbage_collection():
            self.env.run(until=horizon)
        self.trace.set_open_requests([
            (job.session_id, job.turn_id, job.name, job.attempt, job.enqueued, job.started, _NAN,
             job.outcome or "waiting") for job in self._open_requests])

    def control(self, session_id: str, action: str) -> Transition:
        """Apply a conversation control now. ``start`` on an unknown session creates it (live mode).

        Raises :class:`~pipesim.state.IllegalTransition` or :class:`~pipesim.state.UnknownSession`, with
        nothing changed, when the control does not fit the session's state.
        """
        s = self.sessions.get(session_id)
        if s is None:
            if action == "start" and session_id in self._forgotten:
                raise IllegalTransition(session_id, "lifecycle", "stopped", "start",
                                        "the session was stopped (and since forgotten); its id cannot be reused")
            if action == "start" and self.live:
                reserved = self.reserved_for(session_id)
                if reserved:  # creating it now would make the scenario's own spawn of that id fail later
                    raise IllegalTransition(session_id, "lifecycle", "unknown", "create",
                                            f"the id is reserved: {reserved}")
                return self._spawn(session_id)
            raise UnknownSession(session_id)
        now = self.env.now
        if action == "start":
            tr = self.manager.start(session_id, now)
            if s.script is None and not s.voice:
                s.epoch += 1
                self.env.process(self._user(s, s.epoch, fresh=False))
            return tr
        if action == "pause":
            tr = self.manager.pause(session_id, now)
            self._abandon(s, "cancelled")
            return tr
        if action == "stop":
            tr = self.manager.stop(session_id, now)
            self._abandon(s, "cancelled")
            self._ended(s)
            return tr
        return self.manager.control(session_id, action, now)  # raises: unknown action

    def add_session(self, session_id: str, *, turns: int | None = None, audio_quality: float | None = None,
                    start: bool = True, voice: bool = False) -> Transition:
        """Create a session now from the scenario's session template (live mode), with ``turns`` user
        turns and a user whose typical ``audio_quality`` (0..1, exclusive) is given, where not None.
        With ``voice``, its user is a real voice instead: it speaks when :meth:`voice_started` and
        :meth:`voice_ended` say (a microphone), with the quality its audio had; the rest of each turn is the
        model's.

        The template's draws happen as for any session (same streams), then the options replace them.

        >>> from pipesim.scenario import Scenario
        >>> sim = Simulation(Scenario(), live=True)
        >>> sim.add_session("abc", turns=2, audio_quality=0.5).status
        'active'
        >>> sim.sessions["abc"].n_turns, sim.sessions["abc"].snr_db == sim.scenario.quality.midpoint_db
        (2, True)
        """
        reserved = self.reserved_for(session_id)
        if reserved:
            raise IllegalTransition(session_id, "lifecycle", "unknown", "create", f"the id is reserved: {reserved}")
        tr = self._spawn(session_id, start=False)
        s = self.sessions[session_id]
        s.voice = voice
        if turns is not None:
            s.n_turns = turns
        if audio_quality is not None:
            # The chunk quality is logistic((SNR - midpoint) / scale): invert it for the user's SNR level.
            q = self.scenario.quality
            s.snr_db = q.midpoint_db + q.scale_db * math.log(audio_quality / (1.0 - audio_quality))
        if start:
            tr = self.manager.start(session_id, self.env.now)
            if not voice:
                self.env.process(self._user(s, s.epoch, fresh=True))
        return tr

    def speak_now(self, session_id: str) -> None:
        """Live: the session's user starts an utterance now (an RTVI ``send-text``), drawn as any other.

        The user's own schedule (thinking, speaking) is replaced by one that starts with this utterance;
        while the bot speaks this is a barge-in. Raises :class:`~pipesim.state.IllegalTransition` (nothing
        changed) when the session is not active, the bot has not started speaking its reply yet, or the
        session's user is a real voice (``add_session(..., voice=True)``).

        >>> sim = Simulation(Scenario(), live=True)
        >>> _ = sim.control("abc", "start")
        >>> sim.speak_now("abc"); sim.env.run(until=sim.env.now + 0.01)
        >>> sim.trace.events_frame()["event"].iloc[-1]
        'speech_started'
        """
        s = self._session(session_id)
        if s.voice:
            raise IllegalTransition(session_id, "pipeline", self.manager.snapshot(session_id, self.env.now).state,
                                    "speech_started", "the session's user is a real voice: it speaks itself")
        if s.script is not None:
            self._scripted_speech(s, s.draw["utterance"]())
            return
        self._interrupting(s, "the bot is still preparing its reply; speak once it talks")
        s.epoch += 1  # the user's pending think time or utterance is superseded by this one
        s.n_turns = max(s.n_turns, s.turns_done + 1)
        self.env.process(self._user(s, s.epoch, fresh=False))

    def voice_started(self, session_id: str) -> None:
        """Live: the real voice of a ``voice`` session (:meth:`add_session`) starts an utterance now; it lasts
        until :meth:`voice_ended`. While the bot speaks this is a barge-in. Raises
        :class:`~pipesim.state.IllegalTransition` (nothing changed) when the session is not active, the bot is
        preparing its reply (it hears the user again once it talks), or the voice is already speaking.

        >>> sim = Simulation(Scenario(), live=True)
        >>> _ = sim.add_session("mic", voice=True)
        >>> sim.voice_started("mic"); sim.env.run(until=1.5)
        >>> sim.voice_audio("mic", 48_000, 0.9); sim.voice_ended("mic", 48_000, 0.9)
        >>> sim.env.run(until=1.51)
        >>> sim.trace.events_frame()[["t", "event", "value"]].tail(2).values.tolist()
        [[1.5, 'audio', nan], [1.5, 'speech_ended', 1.5]]
        """
        s = self._session(session_id)
        if not s.voice:
            raise ValueError(f"session {session_id!r} has no real voice (add_session(..., voice=True))")
        if s.heard is not None:
            raise IllegalTransition(session_id, "pipeline", "listening", "speech_started", "the voice is speaking")
        self._interrupting(s, "the bot is still preparing its reply; the user is heard once it talks")
        s.heard = _Heard(self.env.event())
        self.env.process(self._speak(s, s.epoch, s.heard))

    def voice_audio(self, session_id: str, audio_bytes: int, quality: float) -> None:
        """Live: an audio report of a ``voice`` session, now: while it speaks, ``audio_bytes`` of its utterance
        are buffered; between utterances (a muted microphone) only the ``quality`` 0..1 is news, and the
        buffer stays as it is. Ignored while the session takes no audio (a turn in flight, paused, stopped),
        as the state manager would refuse it."""
        s = self._session(session_id)
        mgr, now = self.manager, self.env.now
        if mgr.status(session_id) != ACTIVE:
            return
        snap = mgr.snapshot(session_id, now)
        if snap.state != PROCESSING:
            mgr.audio(session_id, now, audio_bytes if s.heard is not None else snap.buffer_size, quality)
        if s.heard is not None:
            s.heard.audio_bytes, s.heard.quality = audio_bytes, quality

    def voice_ended(self, session_id: str, audio_bytes: int, quality: float) -> None:
        """Live: the utterance of a ``voice`` session ended now, with ``audio_bytes`` of audio of ``quality``;
        the turn follows as any other (end-of-utterance delay, STT, LLM, TTS). Nothing when no utterance was
        heard starting (it began while the bot prepared its reply, or a pause cut it)."""
        s = self._session(session_id)
        heard, s.heard = s.heard, None
        if heard is not None:
            heard.audio_bytes, heard.quality = audio_bytes, quality
            heard.ended.succeed()

    def forget(self, session_id: str) -> None:
        """Drop everything kept about a stopped session (long live runs keep their memory bounded).

        Afterwards the session is unknown (controls get :class:`~pipesim.state.UnknownSession`), except
        that ``start`` is still refused: a stopped session's id is never created again. (The trace keeps
        its events.) Raises :class:`~pipesim.state.IllegalTransition` if the session is not stopped.

        >>> from pipesim.scenario import Scenario
        >>> sim = Simulation(Scenario(), live=True)
        >>> _ = sim.control("abc", "start"); _ = sim.control("abc", "stop")
        >>> sim.forget("abc")
        >>> "abc" in sim.sessions, "abc" in sim.manager
        (False, False)
        """
        self.manager.forget(session_id)
        del self.sessions[session_id]
        if self.reserved_for(session_id) is None:  # the scenario's own ids are refused anyway
            self._forgotten.add(session_id)

    def inject_fault(self, fault: str, service: str | None = None, duration_s: float = 5.0) -> None:
        """Live faults: a Kafka stall (all topics or ``service``'s) or a service outage, from now for
        ``duration_s``. (``disconnect`` is the server's business, not the model's.)"""
        now = self.env.now
        if fault == "kafka_stall":
            self.kafka.add_window(service, now, now + duration_s, cause="injected")
        elif fault == "service_outage":
            if service not in SERVICES:
                raise ValueError(f"service_outage needs a service (stt, llm or tts), got {service!r}")
            self.kafka.add_window(service, now, now + duration_s, cause="injected_outage")
        else:
            raise ValueError(f"unknown fault {fault!r}")

    # Sessions --------------------------------------------------------------------------------------
    def reserved_for(self, session_id: str) -> str | None:
        """Why a live client may not create ``session_id`` (the scenario will), or None."""
        sessions = self.scenario.sessions
        for script in sessions.scripted:
            if script.id == session_id:
                return f"a scripted session of the scenario, starting at t={script.timeline[0].at:g} s"
        prefix = f"{sessions.id_prefix}-"
        digits = session_id[len(prefix):]
        if session_id.startswith(prefix) and len(digits) >= 5 and digits.isdigit():
            return f"the scenario names its own sessions {prefix}NNNNN"
        return None

    def _session(self, session_id: str) -> _Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise UnknownSession(session_id)
        return s

    def _session_id(self, i: int) -> str:
        return f"{self.scenario.sessions.id_prefix}-{i + 1:05d}"

    def _count_expected(self) -> int | None:
        arrivals, scripted = self.scenario.sessions.arrivals, len(self.scenario.sessions.scripted)
        if isinstance(arrivals, AtOnce):
            return arrivals.count + scripted
        if isinstance(arrivals, Poisson) and arrivals.count is not None and arrivals.duration_s is None:
            return arrivals.count + scripted
        return None

    def _spawn(self, session_id: str, script: ScriptedSession | None = None, start: bool = True) -> Transition:
        if session_id in self.manager:
            raise IllegalTransition(session_id, "lifecycle", self.manager.status(session_id), "create",
                                    "a session with this id exists")
        s = self.sessions[session_id] = _Session(self, session_id, script)
        tr = self.manager.create_session(session_id, self.env.now)
        if start:
            tr = self.manager.start(session_id, self.env.now)
            if script is None:
                self.env.process(self._user(s, s.epoch, fresh=True))
        return tr

    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        arrivals = self.scenario.sessions.arrivals
        rng = self.streams.generator("arrivals")
        env, i = self.env, 0
        if isinstance(arrivals, Poisson):
            limit = arrivals.count if arrivals.count is not None else math.inf
            end = arrivals.duration_s if arrivals.duration_s is not None else math.inf
            gaps = rng.exponential(1.0 / arrivals.rate_per_s, 256).tolist()
            while i < limit:
                if not gaps:
                    gaps = rng.exponential(1.0 / arrivals.rate_per_s, 256).tolist()
                gap = gaps.pop()
                if env.now + gap >= end:
                    return
                yield env.timeout(gap)
                self._spawn(self._session_id(i))
                i += 1
            return
        assert isinstance(arrivals, Ramp)
        # Thinning (Lewis & Shedler): candidates at the peak rate, kept with probability rate(t)/peak.
        times = np.array([p[0] for p in arrivals.points])
        rates = np.array([p[1] for p in arrivals.points])
        peak = float(rates.max())
        if peak <= 0:
            return
        t = float(times[0])
        if t > env.now:
            yield env.timeout(t - env.now)
        while True:
            t += float(rng.exponential(1.0 / peak))
            if t >= times[-1]:
                return
            accepted = rng.random() * peak <= float(np.interp(t, times, rates))
            # Past the horizon, wait there even for a rejected candidate: thinning goes on only if the run
            # does, instead of spinning through the rest of the ramp now.
            if accepted or t >= self._horizon:
                yield env.timeout(t - env.now)
            if accepted:
                self._spawn(self._session_id(i))
                i += 1

    def _ended(self, s: _Session) -> None:
        s.ended = True
        s.epoch += 1
        if not self.live:
            # Offline, nothing asks for an ended session by id again (its late work holds it itself): let its
            # streams and state go, so that memory follows the sessions in flight, not every session so far.
            del self.sessions[s.id]
        if self.on_session_end is not None:
            self.on_session_end(s.id)

    def _finish(self, s: _Session) -> None:
        self._abandon(s, "cancelled")
        self.manager.stop(s.id, self.env._now)
        self._ended(s)

    def _user(self, s: _Session, epoch: int, fresh: bool) -> Generator[simpy.Event, Any, None]:
        """A simulated user: speaks, waits for the reply (or barges in), thinks, speaks again."""
        env, draw, cfg = self.env, s.draw, self.scenario.sessions
        if fresh:
            yield env.timeout(draw["first_speech"]())
            if s.epoch != epoch:
                return
        while s.turns_done < s.n_turns:
            turn = yield from self._speak(s, epoch, draw["utterance"]())
            if turn is None:
                return
            outcome = yield turn.finished
            if s.epoch != epoch:
                return
            if outcome == "failed" and s.repeats < cfg.max_repeats:
                s.repeats += 1  # the agent re-prompts; the user says it again
            else:
                s.turns_done += 1
                s.repeats = 0
            if outcome == "barge_in":
                continue  # the user is already speaking: that is the next utterance
            yield env.timeout(draw["think"]())
            if s.epoch != epoch:
                return
        self._finish(s)

    def _speak(self, s: _Session, epoch: int,
               duration: float | _Heard) -> Generator[simpy.Event, Any, _Turn | None]:
        """The user speaks for ``duration`` s: the buffer grows chunk by chunk and the running quality is
        reported every ``metadata_interval_s`` (closed form: one event per report, not per chunk). After the
        end-of-utterance delay the turn is handed to the pipeline. Returns the turn, or None if cancelled.

        An utterance lasts at least one chunk (so that no turn takes zero time) and at most
        ``MAX_UTTERANCE_S`` (a longer draw is cut there). A real voice's utterance (``_Heard``) lasts until
        the live side ends it, and its audio is what the live side heard."""
        env, mgr, sid = self.env, self.manager, s.id
        if s.epoch != epoch:  # paused or stopped before the process that speaks took its first step
            return None
        t0 = env._now
        if isinstance(duration, _Heard):
            upcoming_turn = mgr.speech_started(sid, t0).turn_id + 1
            yield duration.ended
            if s.epoch != epoch:
                return None
            return (yield from self._spoken(s, epoch, t0, env._now - t0, duration.quality, duration.audio_bytes,
                                            upcoming_turn))
        duration = min(max(duration, self._chunk_s), MAX_UTTERANCE_S)
        upcoming_turn = mgr.speech_started(sid, t0).turn_id + 1  # the turn this speech becomes
        n_chunks = max(1, math.ceil(duration / self._chunk_s - 1e-9))
        q = self.scenario.quality
        # Per chunk: snr = snr_db + sd * z; quality = 1 / (1 + exp(-(snr - midpoint) / scale)); then the
        # running mean, rounded to 4 places. In place in one array (the same operations in the same order,
        # so the same bits as the plain expressions): a dozen small numpy calls per utterance add up.
        # Kept as an array (8 bytes a chunk), not a list of floats, while the user speaks.
        # Ufuncs called directly: numpy's wrappers (np.cumsum, np.round, ndarray.max) cost more than the
        # work on a few hundred chunks. Each replacement computes the same bits: midpoint - x is exactly
        # -(x - midpoint); cumsum is add.accumulate. The array ends as the running sums: the mean is taken
        # and rounded only for the ~10 chunks reported (see _running_quality), not for every chunk.
        running = s.user_rng.standard_normal(n_chunks)
        running *= q.snr_chunk_sd_db
        running += s.snr_db
        np.subtract(q.midpoint_db, running, out=running)
        running /= q.scale_db
        if _max(running) > _EXP_SAFE:  # a chunk far below the midpoint: exp overflows, quality is 0
            with np.errstate(over="ignore"):
                np.exp(running, out=running)
        else:  # np.errstate costs more than the rest: only where it is needed
            np.exp(running, out=running)
        running += 1.0
        np.divide(1.0, running, out=running)
        _cumsum(running, out=running)
        # The running reports are callbacks, not steps of this process (they are about half of all
        # transitions): each report schedules the next, and the last one the end of speech, which wakes
        # this process; the same times, scheduled at the same moments, as a loop of timeouts here.
        if self._interval and self._interval < duration:
            spoken = env.event()
            env.timeout(t0 + self._interval - env._now).callbacks.append(
                _AudioReports(self, s, epoch, t0, duration, n_chunks, running, spoken).report)
            yield spoken
        else:
            yield env.timeout(t0 + duration - env._now)
        if s.epoch != epoch:
            return None
        return (yield from self._spoken(s, epoch, t0, duration, _running_quality(running, n_chunks),
                                        n_chunks * self._chunk_bytes, upcoming_turn))

    def _spoken(self, s: _Session, epoch: int, t0: float, duration: float, quality: float, audio_bytes: int,
                upcoming_turn: int) -> Generator[simpy.Event, Any, _Turn | None]:
        """The utterance that began at ``t0`` and lasted ``duration`` s ended now: its last audio report, then
        after the end-of-utterance delay the turn is handed to the pipeline (see :meth:`_speak`)."""
        env, mgr, sid = self.env, self.manager, s.id
        mgr.audio(sid, env._now, audio_bytes, quality)
        speech_end = env._now
        self.trace.model_event(speech_end, sid, upcoming_turn, "speech_ended", value=duration)
        yield env.timeout(s.draw["eou"]())
        if s.epoch != epoch:
            return None
        tr = mgr.utterance_ended(sid, env._now)
        turn = s.turn = _Turn(env, sid, tr.turn_id)
        turn.rec[_TURN_INDEX["speech_start"]] = t0
        turn.rec[_TURN_INDEX["speech_end"]] = speech_end
        turn.rec[_TURN_INDEX["utterance_ended"]] = env._now
        turn.rec[_TURN_INDEX["utterance_duration"]] = duration
        turn.rec[_TURN_INDEX["audio_quality"]] = quality
        turn.rec[_TURN_INDEX["audio_bytes"]] = audio_bytes
        turn.rec[_TURN_INDEX["end_of_utterance_delay"]] = env._now - speech_end
        env.process(self._pipeline(s, turn))
        return turn

    def _script(self, script: ScriptedSession) -> Generator[simpy.Event, Any, None]:
        """A scripted session: does exactly what its timeline says, at the times it says."""
        env, steps = self.env, script.timeline
        first = steps[0]
        if first.at > env.now:
            yield env.timeout(first.at - env.now)
        self._spawn(script.id, script)  # an opening ``start`` step is the session's start
        s = self.sessions[script.id]
        for step in steps[1:] if first.action == "start" else steps:
            if step.at > env.now:
                yield env.timeout(step.at - env.now)
            if s.ended:
                return
            try:
                if step.action is None:
                    self._scripted_speech(s, step.speak or 0.0)
                elif step.action == "barge_in":
                    self._barge_in(s)
                else:
                    self.control(s.id, step.action)
                    if step.action == "stop":
                        return
            except (IllegalTransition, UnknownSession) as exc:
                self.trace.model_event(env.now, s.id, -1, "script_step_ignored", detail=str(exc))

    def _interrupting(self, s: _Session, too_early: str) -> None:
        """The user starts speaking now, outside their own schedule: a barge-in while the bot speaks. Raises
        :class:`~pipesim.state.IllegalTransition` (``too_early`` says why) while the bot prepares its reply."""
        if self.manager.status(s.id) != ACTIVE:
            raise IllegalTransition(s.id, "lifecycle", self.manager.status(s.id), "speech_started",
                                    "a paused or stopped session ignores the user")
        snap = self.manager.snapshot(s.id, self.env.now)
        if snap.state == PROCESSING:
            if snap.tts != EXECUTING:
                raise IllegalTransition(s.id, "pipeline", PROCESSING, "speech_started", too_early)
            self._barge_in(s)

    def _scripted_speech(self, s: _Session, duration: float) -> None:
        self._interrupting(s, "the user spoke before the bot did; script it after the reply")
        epoch = s.epoch  # now: a control between this step and the process's first ends the speech

        def speech() -> Generator[simpy.Event, Any, None]:
            yield from self._speak(s, epoch, duration)

        self.env.process(speech())

    def _barge_in(self, s: _Session) -> None:
        self.manager.barge_in(s.id, self.env.now)
        self._close_turn(s.turn, "barge_in")

    # The turn --------------------------------------------------------------------------------------
    def _pipeline(self, s: _Session, turn: _Turn) -> Generator[simpy.Event, Any, None]:
        """STT, then the LLM streaming into TTS; the turn ends complete, failed or barged in."""
        if turn.done:  # cancelled (a live control) between the step that made this process and its first
            return
        ok = yield from self._stt(s, turn)
        if not ok or turn.done:
            return
        self.env.process(self._llm(s, turn))
        yield turn.first_sentence
        if turn.done:
            return
        yield from self._tts(s, turn)

    def _attempt(self, s: _Session, turn: _Turn, name: str,
                 plan: Callable[[], _Work]) -> Generator[simpy.Event, Any, _Work | None]:
        """Request ``name`` through Kafka until a first response comes back in time, retrying timeouts.

        An attempt times out when its first response has not reached the orchestrator ``request_timeout_s``
        after it was sent: the Kafka legs, the wait in the consumer's queue and the worker's time to first
        response all count. The orchestrator then backs off and sends a new request; the stale one lives on
        (:meth:`_stale`): Kafka still delivers it, and the consumer either serves it, wasting a worker, or
        drops it when it reads it (``kafka.stale_requests``). A worker whose answer came too late works to
        the end of its job all the same. ``plan()`` is called when a worker takes a request. Each attempt is a
        row of the requests table, written when it is over (``pipesim.trace.REQUEST_OUTCOMES`` says what
        became of it).

        Fills the stage's kafka/queue/service/retry/timeouts columns: ``queue`` is the time every attempt
        waited for a worker, ``retry`` the rest of the time lost to timed-out attempts (their Kafka legs,
        their workers' time and the backoffs), so that the four add up to the stage. Returns the successful
        attempt's work, or None when the turn ended meanwhile (failed here, or cancelled elsewhere).
        """
        env, mgr, sid, rec = self.env, self.manager, s.id, turn.rec
        i_kafka, i_queue, i_service, i_retry, i_timeouts = _STAGE_INDEX[name]
        timeout = self.scenario.kafka.request_timeout_s
        pool = self.pools[name]
        kafka_delay, kafka_latency, model_event = self.kafka.delay, s.draw["kafka"], self.trace.model_event
        mgr.service_requested(sid, name, env._now)
        requested = env._now
        waited, attempt = 0.0, 0  # time earlier attempts waited for a worker; attempts so far
        while True:
            sent = env._now
            deadline = sent + timeout
            job = _Job(name, sid, turn.turn_id, attempt + 1)
            self._open_requests[job] = None
            d_req = kafka_delay(name, sent, kafka_latency())
            if d_req > timeout:  # still in Kafka at the deadline
                yield env.timeout(timeout)
                if turn.done:
                    self._end_request(job, "cancelled", _NAN)  # never delivered
                    return None
                env.process(self._stale(s, turn, job, sent + d_req, deadline, plan))
            else:
                yield env.timeout(d_req)
                if turn.done:
                    self._end_request(job, "cancelled", _NAN)
                    return None
                model_event(env._now, sid, turn.turn_id, "request_delivered", name, d_req)
                queued = job.enqueued = env._now
                req = job.req = pool.request()
                turn.requests.append(job)
                self._sample(name)
                if req._value is _PENDING:  # every worker busy: wait for one, or for the deadline
                    yield req | env.timeout(deadline - env._now)
                    if turn.done:
                        return None
                if req._value is not _PENDING:  # triggered
                    yield req  # granted (at once, or before the deadline)
                    if turn.done:
                        return None
                    self._sample(name)  # granted: a released worker passed to this request shows as busy
                    started = job.started = env._now
                    mgr.service_started(sid, name, started)
                    work = plan()
                    self._hold(turn, job, work.busy)
                    # Past the deadline the answer's exact arrival does not matter: the orchestrator gave up.
                    d_resp = kafka_delay(name, started + work.first_response, kafka_latency(),
                                         give_up_after=max(0.0, deadline - started - work.first_response))
                    arrival = started + work.first_response + d_resp
                    job.outcome = "served" if arrival <= deadline else "timed_out"
                    if arrival <= deadline:
                        yield env.timeout(arrival - env._now)
                        if turn.done:
                            return None
                        rec[i_kafka] = d_req + d_resp
                        rec[i_queue] = waited + started - queued
                        rec[i_service] = work.first_response
                        rec[i_retry] = sent - requested - waited
                        rec[i_timeouts] = attempt
                        model_event(env._now, sid, turn.turn_id, "first_response", name, env._now - requested)
                        if work.error is not None:
                            mgr.service_failed(sid, name, env._now, work.error)
                            self._close_turn(turn, "failed", f"{name}: {work.error}")
                            return None
                        return work
                    yield env.timeout(deadline - env._now)  # the worker works on; the answer comes too late
                    if turn.done:
                        return None
                    waited += started - queued
                    turn.requests.remove(job)
                else:  # still queued at the deadline
                    waited += deadline - queued
                    turn.requests.remove(job)
                    env.process(self._stale(s, turn, job, queued, deadline, plan))
            rec[i_queue] = waited
            rec[i_retry] = env._now - requested - waited
            if not (yield from self._timed_out(s, turn, name, attempt)):
                return None
            attempt += 1

    def _stale(self, s: _Session, turn: _Turn, job: _Job, delivered: float, deadline: float,
               plan: Callable[[], _Work]) -> Generator[simpy.Event, Any, None]:
        """A request the orchestrator gave up on: Kafka delivers it (``job.req`` is None while it is in transit)
        and the consumer queues it; when a worker reads it, it serves it (``stale_requests: served``: the
        consumer cannot know) or skips it (``dropped``: it checks the request's deadline)."""
        env, name = self.env, job.name
        if job.req is None:
            yield env.timeout(delivered - env._now)
            self.trace.model_event(env._now, s.id, turn.turn_id, "request_delivered", name, detail="stale")
            job.enqueued = env._now
            job.req = self.pools[name].request()
            self._sample(name)
        yield job.req
        self._sample(name)
        if self.scenario.kafka.stale_requests == "dropped":
            self.trace.model_event(env._now, s.id, turn.turn_id, "stale_request_dropped", name, env._now - deadline)
            job.outcome = "dropped"  # read and skipped: it leaves the queue with no worker time
            self._release(job)
            return
        job.started, job.outcome = env._now, "stale"
        work = plan()
        self._hold(turn, job, work.busy)
        self.trace.model_event(env._now, s.id, turn.turn_id, "stale_request_served", name, work.busy)

    def _timed_out(self, s: _Session, turn: _Turn, name: str, attempt: int) -> Generator[simpy.Event, Any, bool]:
        """A Kafka timeout: count it, fail the turn past the retry budget, else back off."""
        cfg = self.scenario.kafka
        turn.rec[_STAGE_INDEX[name][4]] = attempt + 1
        tr = self.manager.kafka_timeout(s.id, name, self.env._now)
        if tr.event == "turn_failed":
            self._close_turn(turn, "failed", tr.error)
            return False
        yield self.env.timeout(cfg.backoff_s * cfg.backoff_multiplier ** attempt)
        return not turn.done

    def _stt(self, s: _Session, turn: _Turn) -> Generator[simpy.Event, Any, bool]:
        q = self.scenario.quality
        stt = self.scenario.services.stt
        poor = turn.rec[_TURN_INDEX["audio_quality"]] < q.poor_threshold
        rng = s.services_rng["stt"]

        def plan() -> _Work:
            latency = s.draw["stt"]() * (q.poor_stt_latency_factor if poor else 1.0)
            error = None
            if rng.random() < stt.failure_probability:
                error = "service error"
            elif poor and rng.random() < q.poor_stt_failure_probability:
                error = f"low audio quality ({turn.rec[_TURN_INDEX['audio_quality']]:.2f}), re-prompting the user"
            return _Work(latency, latency, error)

        start = self.env._now
        work = yield from self._attempt(s, turn, "stt", plan)
        if work is None:
            return False
        self.manager.service_completed(s.id, "stt", self.env._now)
        turn.rec[_TURN_INDEX["stt_stage"]] = self.env._now - start
        turn.rec[_TURN_INDEX["transcription_delay"]] = self.env._now - turn.rec[_TURN_INDEX["speech_end"]]
        return True

    def _llm(self, s: _Session, turn: _Turn) -> Generator[simpy.Event, Any, None]:
        """The LLM streams: the first phrase releases TTS; the rest overlaps with TTS."""
        env, llm = self.env, self.scenario.services.llm
        if turn.done:  # cancelled between the step that made this process and its first (see _pipeline)
            return
        rng = s.services_rng["llm"]
        tokens = max(1, round(s.draw["tokens"]()))
        turn.tokens = tokens
        turn.rec[_TURN_INDEX["llm_tokens"]] = tokens
        first_phrase = min(llm.first_sentence_tokens, tokens)

        def plan() -> _Work:
            ttft, per_token = s.draw["ttft"](), s.draw["per_token"]()
            error = "service error" if rng.random() < llm.failure_probability else None
            return _Work(ttft, ttft + (tokens - 1) * per_token, error, per_token)

        start = env._now
        work = yield from self._attempt(s, turn, "llm", plan)
        if work is None:
            return
        turn.rec[_TURN_INDEX["ttft"]] = env._now - start
        self.trace.model_event(env._now, s.id, turn.turn_id, "first_token", "llm", env._now - start)
        yield env.timeout((first_phrase - 1) * work.per_token)
        if turn.done:
            return
        first_sentence_at = env._now
        turn.rec[_TURN_INDEX["llm_service"]] += (first_phrase - 1) * work.per_token
        turn.rec[_TURN_INDEX["llm_stage"]] = env._now - start
        turn.first_sentence.succeed()
        yield env.timeout((tokens - first_phrase) * work.per_token)
        if turn.done:
            return
        self.manager.service_completed(s.id, "llm", env._now)
        turn.rec[_TURN_INDEX["llm_duration"]] = env._now - start
        turn.rec[_TURN_INDEX["streaming_overlap"]] = env._now - first_sentence_at
        turn.llm_finished = True
        if turn.llm_done is not None:
            turn.llm_done.succeed()

    def _tts(self, s: _Session, turn: _Turn) -> Generator[simpy.Event, Any, None]:
        env, tts, sessions = self.env, self.scenario.services.tts, self.scenario.sessions
        rng = s.services_rng["tts"]
        audio_s = turn.tokens * tts.audio_s_per_token

        def plan() -> _Work:
            ttfb = s.draw["ttfb"]()
            error = "service error" if rng.random() < tts.failure_probability else None
            return _Work(ttfb, ttfb + audio_s * tts.real_time_factor, error)

        start = env._now
        work = yield from self._attempt(s, turn, "tts", plan)
        if work is None:
            return
        first_audio = env._now
        turn.rec[_TURN_INDEX["ttfb"]] = first_audio - start
        turn.rec[_TURN_INDEX["tts_stage"]] = first_audio - start
        turn.rec[_TURN_INDEX["first_audio"]] = first_audio
        turn.rec[_TURN_INDEX["tts_audio_duration"]] = audio_s
        turn.rec[_TURN_INDEX["e2e_latency"]] = first_audio - turn.rec[_TURN_INDEX["speech_end"]]
        self.trace.model_event(first_audio, s.id, turn.turn_id, "first_audio", "tts", first_audio - start)
        playback_end = first_audio + audio_s
        barge_at = math.inf
        if s.script is None and not s.voice and s.user_rng.random() < sessions.barge_in_probability:
            barge_at = first_audio + s.draw["barge_after"]()
        if barge_at < playback_end:
            yield env.timeout(barge_at - env._now)
            if turn.done:
                return
            self._barge_in(s)
            return
        yield env.timeout(playback_end - env._now)
        if turn.done:
            return
        if not turn.llm_finished:
            turn.llm_done = env.event()
            yield turn.llm_done
            if turn.done:
                return
        self.manager.service_completed(s.id, "tts", env._now)
        self._close_turn(turn, "complete")

    # Bookkeeping -----------------------------------------------------------------------------------
    def _hold(self, turn: _Turn, job: _Job, busy: float) -> None:
        """A worker took ``job`` and stays busy for ``busy`` seconds: count it, schedule its release."""
        job.release_at = self.env._now + busy
        self._add_busy(turn, job.name, busy)
        self.env.timeout(busy).callbacks.append(lambda _ev: self._release(job))

    def _add_busy(self, turn: _Turn, name: str, seconds: float) -> None:
        column = _TURN_INDEX[f"{name}_busy"]
        turn.rec[column] += seconds
        if turn.row is not None:  # stale work finishing after the turn: keep its row whole
            self.trace.update_turn(turn.row, turn.rec)

    def _release(self, job: _Job) -> None:
        pool = self.pools[job.name]
        if job.req in pool.users:
            pool.release(job.req)
            self._sample(job.name)
            # No outcome yet: granted, and its turn ended before its process woke to take it (same instant).
            self._end_request(job, job.outcome or "cancelled", self.env._now)

    def _end_request(self, job: _Job, outcome: str, finished: float) -> None:
        """``job`` is over: its row of the requests table."""
        del self._open_requests[job]
        self._add_request((job.session_id, job.turn_id, job.name, job.attempt, job.enqueued, job.started, finished,
                           outcome))

    def _sample(self, name: str) -> None:
        users, queue, capacity = self._pool_state[name]
        self._service_sample(self.env._now, name, len(users), len(queue), capacity)

    def _close_turn(self, turn: _Turn | None, outcome: str, error: str | None = None) -> None:
        """End a turn once: withdraw its queued requests, free its workers, write its row."""
        if turn is None or turn.done:
            return
        turn.done = True
        now = self.env._now
        for job in turn.requests:  # the orchestrator cancels what it still waits for
            if job.req._value is _PENDING:  # not triggered
                job.req.cancel()
                self._sample(job.name)
                self._end_request(job, "cancelled", now)
            elif job.req in self.pools[job.name].users:
                if job.release_at > now:
                    self._add_busy(turn, job.name, now - job.release_at)  # freed before its planned end
                self._release(job)
        turn.requests.clear()
        turn.rec[_TURN_INDEX["outcome"]] = outcome
        turn.rec[_TURN_INDEX["error"]] = error
        turn.rec[_TURN_INDEX["turn_end"]] = now
        turn.row = self.trace.add_turn(turn.rec)
        self.trace.model_event(self.env._now, turn.rec[0], turn.turn_id, "turn_ended", detail=outcome)
        turn.finished.succeed(outcome)
        # The LLM no longer triggers these for an ended turn: a process still waiting on one would wait for
        # ever, in a cycle with the event; without its callback, reference counting frees it (it returns
        # without a trace when woken into an ended turn, so nothing observable changes).
        for waited in (turn.first_sentence, turn.llm_done):
            if waited is not None and waited._value is _PENDING:
                waited.callbacks.clear()

    def _abandon(self, s: _Session, outcome: str) -> None:
        """Pause or stop: the turn in flight is cancelled and every process of this epoch goes quiet."""
        self._close_turn(s.turn, outcome)
        s.turn = None
        s.epoch += 1
        if s.heard is not None:  # the voice's utterance is cut: nobody waits for its end any more
            s.heard.ended.callbacks.clear()
            s.heard = None

    def __repr__(self) -> str:
        status = self.manager.status
        active = sum(1 for sid in self.sessions if status(sid) != STOPPED)
        return f"<Simulation {self.scenario.name!r} seed={self.seed} t={self.env.now:.3f} active={active}>"
