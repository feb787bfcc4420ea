"""The live mock backend: the scenario's model in real time over ``/ws`` and the dialects of
:data:`~pipesim.live.dialect.DIALECTS` (see :mod:`pipesim.live.server` for the protocol it serves)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection

from pipesim.live.clock import PacerClock
from pipesim.live.connection import RTVI_PATH, Client
from pipesim.live.dialect import DIALECTS, Dialect
from pipesim.live.encode import encode_transition
from pipesim.live.options import ServerOptions
from pipesim.live.pacer import Pacer
from pipesim.live.rtvi import RtviDialect
from pipesim.live.server import BaseServer, log
from pipesim.live.source import DEFAULT_TRACE_LIMIT, LiveModel
from pipesim.model import Simulation
from pipesim.protocol import ConversationControl, FaultInjection
from pipesim.scenario import Scenario, as_scenario
from pipesim.state import IllegalTransition, Transition, UnknownSession


class LiveServer(BaseServer):
    """The live mock backend: the scenario's model in real time, over the orchestrator's protocol.

    ``speed`` is simulated seconds per wall second; ``owner_only`` lets a connection control only the
    sessions it started; ``bot_audio`` sends the bot's audio to RTVI clients while it speaks (see
    :mod:`pipesim.live.rtvi_audio`); ``forget_after`` and ``trace_limit`` bound its memory (see "Memory"
    in :mod:`pipesim.live.server`). Where it listens and who may connect (``host``, ``port``, ``record``,
    ``token``, ``admin_port``, ...) are the :class:`~pipesim.live.options.ServerOptions`, given as
    ``options`` or as keywords of the same names (``port=0`` picks a free port). The scenario's own
    sessions (arrivals, scripted ones) run as they would offline; clients add sessions with ``start``.

    >>> import asyncio
    >>> from pipesim.scenario import Scenario
    >>> quiet = Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 0}}})
    >>> async def demo():
    ...     async with LiveServer(quiet, port=0, speed=10) as server:
    ...         return server.url.startswith("ws://127.0.0.1:")
    >>> asyncio.run(demo())
    True
    """

    kind = "live"

    def __init__(self, scenario: Scenario | str | Path | dict[str, Any], *, seed: int | None = None,
                 speed: float = 1.0, owner_only: bool = False, forget_after: float | None = 60.0,
                 trace_limit: int | None = DEFAULT_TRACE_LIMIT, bot_audio: bool = True,
                 options: ServerOptions | None = None, **server_options: Any) -> None:
        super().__init__(options, **server_options)
        #: Clients may control only the sessions they started on the same connection.
        self.owner_only = owner_only
        self.scenario = as_scenario(scenario)
        #: The simulation and its pacer: the one owner of both (a reset goes through it).
        self.model: LiveModel = LiveModel(self.scenario, seed=seed, speed=speed, trace_limit=trace_limit,
                               forget_after=forget_after)
        self.model.subscribe(self._on_transition)
        self.model.on_reset(self._on_reset)
        self.timekeeper = PacerClock(lambda: self.model.pacer)
        self._dialect_types = {**DIALECTS, RTVI_PATH: functools.partial(RtviDialect, bot_audio=bot_audio)}
        self._dialects: dict[str, Dialect] = {}  # each made by its first connection

    @property
    def sim(self) -> Simulation:
        """The model (a reset replaces it: read it here each time)."""
        return self.model.sim

    @property
    def pacer(self) -> Pacer:
        """The model's pacer (a reset replaces it)."""
        return self.model.pacer

    @property
    def forgotten(self) -> int:
        """Stopped sessions forgotten so far."""
        return self.model.forgotten

    @property
    def forget_after(self) -> float | None:
        """Simulated seconds after which a stopped session is forgotten (None: never); see "Memory"."""
        return self.model.forget_after

    @property
    def dialect_paths(self) -> tuple[str, ...]:
        return tuple(self._dialect_types)

    def dialect(self, path: str) -> Dialect:
        """The dialect served on ``path`` (made from :data:`~pipesim.live.dialect.DIALECTS` on first use)."""
        if path not in self._dialects:
            self._dialects[path] = self._dialect_types[path](self.hub, self.model)
        return self._dialects[path]

    @property
    def rtvi(self) -> RtviDialect:
        """The RTVI dialect on ``/rtvi``: its connections by session."""
        dialect = self.dialect(RTVI_PATH)
        assert isinstance(dialect, RtviDialect)
        return dialect

    async def _serve_dialect(self, path: str, ws: ServerConnection) -> None:
        await self.dialect(path).serve(ws)

    @property
    def speed(self) -> float:
        return self.pacer.speed

    def _record_header(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "seed": self.sim.seed, "speed": self.pacer.speed}

    def _journal_t(self) -> float:
        return self.pacer.now()

    def _on_start(self) -> None:
        self.model.start()  # the scenario's arrivals and scripted sessions, at simulated time 0

    async def _on_stop(self) -> None:
        await self.model.stop()

    def _on_transition(self, tr: Transition) -> None:
        for text in encode_transition(tr):
            self.hub.publish_text(tr.session_id, text, tr.t)

    def _on_reset(self, old: Simulation) -> None:
        now = old.env.now
        # The old model's sessions vanish: tell their watchers as a stop would.
        for sid in old.manager.session_ids:
            if old.manager.status(sid) != "stopped":
                self.hub.session_ended(sid, now, old.manager.snapshot(sid, now).seq + 1, "reset")
        if self.journal is not None:
            self.journal.clear()
        if self.recorder is not None:  # the new model's time starts at 0 again: a new segment keeps it replayable
            self.recorder.new_segment("reset")

    def _stats(self) -> dict[str, Any]:
        pacer, loop = self.pacer, self.event_loop
        origin, origin_sim = pacer.origin
        clock = {"speed": pacer.speed, "paused": pacer.paused, "sim_now": self.sim.env.now,
                 "origin_sim": origin_sim,
                 # Simulated time t happens at wall time origin + (t - origin_sim) / speed; monotonic is
                 # time.monotonic() of this machine (what the event loop uses), unix is time.time().
                 "origin_monotonic": origin,
                 "origin_unix": None if origin is None or loop is None else time.time() - (loop.time() - origin),
                 # Wall seconds the oldest due event waits: 0 once caught up (load tests wait for it).
                 "behind_s": pacer.behind()}
        return {**super()._stats(), "clock": clock, "pacer_lag": pacer.lag.as_dict(), "pacer_errors": pacer.errors,
                "sessions": len(self.sim.sessions), "forgotten": self.forgotten}

    def _snapshot(self, client: Client) -> list[dict[str, Any]]:
        return self.model.snapshots(client.watch_all, client.watched)

    def _on_control(self, client: Client, msg: ConversationControl) -> None:
        with self.model.applying():
            sid = msg.session_id
            exists = sid in self.sim.manager
            if self.owner_only and exists and sid not in client.owned:
                self.hub.error(client, "forbidden", f"{msg.action}: session {sid!r} was not started by this "
                            "connection (the server lets a connection control only the sessions it started)", sid)
                return
            added = sid not in client.watched
            # Watch before applying, so that the control's own transitions reach this client.
            self.hub.watch(client, sid)
            try:
                self.sim.control(sid, msg.action)
            except UnknownSession:
                self.hub.error(client, "unknown_session",
                            f"{msg.action}: unknown session {sid!r} (send start to create it)", sid)
            except IllegalTransition as exc:
                self.hub.error(client, "illegal_control", f"{msg.action}: {exc}", sid)
            else:
                added = False
                if not exists:
                    client.owned.add(sid)
            finally:
                if added:
                    self.hub.unwatch(client, sid)

    def _on_fault(self, client: Client, msg: FaultInjection) -> None:
        if msg.fault == "disconnect":
            self.disconnect_fault(client, msg, lambda sid: sid in self.sim.manager)
            return
        try:
            now = self.model.inject_fault(msg.fault, msg.service, msg.duration_s)
        except ValueError as exc:
            self.hub.error(client, "bad_message", f"fault_injection: {exc}", msg.session_id)
            return
        log.info("fault injection: %s %s for %.1f s at t=%.3f", msg.fault, msg.service or "all topics",
                 msg.duration_s, now)
