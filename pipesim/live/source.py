"""The live model as a source of messages: the simulation and its pacer, applied "now", reset and forgetting.

:class:`LiveModel` is the one owner of :attr:`~LiveModel.sim` and :attr:`~LiveModel.pacer`. Whoever
changes the model goes through it (a control, a fault, a new session, speech: each applied at the time
the wall clock says it is), and whoever holds on to the model subscribes to what it does: every
transition (:meth:`~LiveModel.subscribe`, kept across a reset), a reset (:meth:`~LiveModel.on_reset`:
the old model is handed over before the new one starts) and a forgotten session
(:meth:`~LiveModel.on_forget`). Nobody else swaps the model.

>>> from pipesim.scenario import Scenario
>>> model = LiveModel(Scenario(), speed=2.0)
>>> model.pacer.speed, model.forgotten
(2.0, 0)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pipesim.live.pacer import Pacer
from pipesim.live.vad import Heard
from pipesim.model import Simulation
from pipesim.protocol import wire_messages
from pipesim.scenario import Scenario
from pipesim.state import IllegalTransition, Transition

#: Where the user's utterances come from: the scenario's draws, or (RTVI sessions) the client's microphone,
#: heard by :mod:`pipesim.live.vad`.
USER_AUDIO = ("scenario", "vad")
#: Events (and service samples; a sixteenth as many turns) a live server's trace keeps by default: a ring, so
#: that memory stays bounded however long it runs (~60 bytes an event in the trace).
DEFAULT_TRACE_LIMIT = 200_000


class LiveModel:
    """The scenario's model stepped in real time (see the module's docstring).

    ``forget_after``: simulated seconds after which a stopped session is forgotten (None: never);
    ``trace_limit``: the events the model's trace keeps (None: everything); ``user_audio``: where an RTVI
    session's utterances come from (:data:`USER_AUDIO`).
    """

    def __init__(self, scenario: Scenario, *, seed: int | None = None, speed: float = 1.0,
                 trace_limit: int | None = DEFAULT_TRACE_LIMIT, forget_after: float | None = 60.0,
                 user_audio: str = "scenario") -> None:
        if forget_after is not None and not forget_after >= 0:
            raise ValueError(f"forget_after must be >= 0 or None, got {forget_after}")
        if user_audio not in USER_AUDIO:
            raise ValueError(f"user_audio must be one of {', '.join(USER_AUDIO)}, got {user_audio!r}")
        self.user_audio = user_audio
        self.scenario = scenario
        self.trace_limit = trace_limit
        self.forget_after = forget_after
        #: Stopped sessions forgotten so far.
        self.forgotten = 0
        #: The one model; its ``trace`` keeps the most recent ``trace_limit`` events (None: everything).
        self.sim = self._new_model(seed)
        self.pacer = Pacer(self.sim.env, speed)
        self._listeners: list[Callable[[Transition], None]] = []
        self._resetting: list[Callable[[Simulation], None]] = []
        self._forgetting: list[Callable[[str], None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def _new_model(self, seed: int | None) -> Simulation:
        return Simulation(self.scenario, seed=seed, live=True, trace_limit=self.trace_limit)

    # Who listens ---------------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Transition], None]) -> None:
        """Call ``listener`` with every transition of the model, this one and every one after a reset."""
        self._listeners.append(listener)

    def on_reset(self, callback: Callable[[Simulation], None]) -> None:
        """Call ``callback(old_model)`` on a reset: the old model has stopped, :attr:`sim` is the new one,
        which starts after the callbacks (so what they publish about the old one comes first)."""
        self._resetting.append(callback)

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(session_id)`` when a stopped session is forgotten."""
        self._forgetting.append(callback)

    # Running ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """The scenario's arrivals and scripted sessions at simulated time 0, and the pacer running."""
        self._unsubscribe = self.sim.manager.subscribe(self._on_transition)
        self.sim.start()
        self._task = asyncio.ensure_future(self.pacer.run())

    async def stop(self) -> None:
        """The pacer stopped; nobody hears the model any more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._unsubscribe is not None:
            self._unsubscribe()

    async def reset(self, scenario: Scenario | None = None, seed: int | None = None,
                    speed: float | None = None) -> None:
        """A new model at t = 0, paused as the old one was: of ``scenario`` (None: the same one), with ``seed``
        (None: the same one, or the new scenario's own), at ``speed`` (None: the same)."""
        pacer = self.pacer
        await self.stop()
        old = self.sim
        if scenario is not None:
            self.scenario = scenario  # (with its own seed, unless one is given)
        elif seed is None:
            seed = old.seed
        self.sim = self._new_model(seed)
        self.pacer = Pacer(self.sim.env, speed or pacer.speed, batch=pacer.batch)
        self.pacer.paused = pacer.paused
        for callback in self._resetting:
            callback(old)
        self.start()

    def _on_transition(self, tr: Transition) -> None:
        for listener in self._listeners:
            listener(tr)
        if tr.event == "session_stopped" and self.forget_after is not None:
            # A model event, so the grace period is simulated time, and the forgetting happens outside
            # the state manager's delivery of this transition.
            sid = tr.session_id
            self.sim.env.timeout(self.forget_after).callbacks.append(lambda _: self._forget(sid))

    def _forget(self, session_id: str) -> None:
        if session_id in self.sim.manager and self.sim.manager.status(session_id) == "stopped":
            self.sim.forget(session_id)
            self.forgotten += 1
            for callback in self._forgetting:
                callback(session_id)

    # Applied now -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def applying(self) -> Iterator[float]:
        """Around anything applied to the model: it happens at the time the wall clock says it is (the
        block gets it), and the pacer looks at the schedule again afterwards."""
        with self.pacer.applying() as now:
            yield now

    def control(self, session_id: str, action: str) -> Transition:
        """A conversation control, now (:class:`~pipesim.state.IllegalTransition`,
        :class:`~pipesim.state.UnknownSession` as :meth:`Simulation.control`)."""
        with self.applying():
            return self.sim.control(session_id, action)

    def speak_now(self, session_id: str) -> None:
        """The simulated user of ``session_id`` speaks now (errors as :meth:`Simulation.speak_now`)."""
        with self.applying():
            self.sim.speak_now(session_id)

    def add_session(self, session_id: str, *, turns: int | None, audio_quality: float | None, start: bool,
                    voice: bool = False) -> None:
        """A session from the scenario's template, now (errors as :meth:`Simulation.add_session`)."""
        with self.applying():
            self.sim.add_session(session_id, turns=turns, audio_quality=audio_quality, start=start, voice=voice)

    def hear(self, session_id: str, heard: list[Heard]) -> int:
        """What the microphone of a voice session was heard saying (:mod:`pipesim.live.vad`), now; returns how
        many utterances began unheard (while the bot prepared its reply: the model ignores the user then).
        Nothing for a session the model no longer knows (forgotten)."""
        unheard = 0
        if session_id not in self.sim.sessions:
            return unheard
        with self.applying():
            for h in heard:
                if h.kind == "started":
                    try:
                        self.sim.voice_started(session_id)
                    except IllegalTransition:
                        unheard += 1
                elif h.kind == "ended":
                    self.sim.voice_ended(session_id, h.audio_bytes, h.quality)
                else:  # a running report, or a muted microphone
                    self.sim.voice_audio(session_id, h.audio_bytes, h.quality)
        return unheard

    def inject_fault(self, fault: str, service: str | None, duration_s: float) -> float:
        """A model fault from now for ``duration_s``; returns now (``ValueError`` for a bad one)."""
        with self.applying() as now:
            self.sim.inject_fault(fault, service, duration_s)
        return now

    def scripted(self, session_id: str) -> bool:
        """Whether the scenario itself creates ``session_id`` (a scripted id, or one of its arrivals')."""
        return self.sim.reserved_for(session_id) is not None

    # Reading -----------------------------------------------------------------------------------------
    def snapshots(self, watch_all: bool, watched: set[str]) -> list[dict[str, Any]]:
        """One ``snapshot`` update per watched session that exists and is not stopped."""
        mgr = self.sim.manager
        now = self.pacer.catch_up()
        out = []
        # A client of one session (?session_id=X, the usual) looks at that one, not at every session: a
        # thousand handshakes would otherwise cost a million look-ups. Several: in the order they were created.
        ids = watched if len(watched) == 1 and not watch_all else mgr.session_ids
        for sid in ids:
            if sid in mgr and (watch_all or sid in watched) and mgr.status(sid) != "stopped":
                out.append(wire_messages(mgr.snapshot(sid, now))[0])
        return out
