"""The pacer: the offline SimPy environment, stepped in real time (the second of the "two clocks").

There is one model. Offline, ``env.run()`` goes as fast as it can; live, :class:`Pacer` sleeps until
the wall clock reaches the next event (``env.peek()``, scaled by ``speed``) and steps every event that
is due. Controls from clients are applied "now": :meth:`Pacer.catch_up` first moves the simulated clock
to the time the wall clock says it is, so that a control lands between the events it really falls
between, then :meth:`Pacer.wake` makes the pacer look again at the schedule (the control may have
scheduled something sooner than what the pacer was waiting for).

Everything runs on one asyncio loop, so the model, the state manager and the server never need a lock.

>>> import asyncio, simpy
>>> env = simpy.Environment()
>>> _ = env.timeout(2.0)            # something happens at t = 2 s of simulated time
>>> pacer = Pacer(env, speed=100)   # 100 simulated seconds per wall second: 2 s take 20 ms
>>> async def main():
...     task = asyncio.create_task(pacer.run())
...     await asyncio.sleep(0.1)
...     task.cancel()
...     return env.now
>>> asyncio.run(main())
2.0
"""

from __future__ import annotations

import asyncio
import logging
import math

import simpy

from pipesim.live.lag import LagHistogram

log = logging.getLogger("pipesim.live")


class Pacer:
    """Steps ``env`` so that simulated time ``t`` happens at wall time ``start + t / speed``.

    ``batch`` bounds how many events are stepped before the pacer yields to the event loop when it is
    behind (a burst of due events must not starve the clients' writer tasks).
    """

    def __init__(self, env: simpy.Environment, speed: float = 1.0, batch: int = 100) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.env = env
        self.speed = float(speed)
        self.batch = batch
        #: Model processes that raised (a pipesim bug): logged and counted, the run goes on.
        self.errors = 0
        #: How late (wall seconds) due events were stepped: one count each time the pacer steps.
        self.lag = LagHistogram()
        self._wake = asyncio.Event()
        self._origin_wall: float | None = None
        self._origin_sim = env.now
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        """The simulated time the wall clock says it is (``env.now`` before the pacer started)."""
        if self._origin_wall is None or self._loop is None:
            return self.env.now
        return self._origin_sim + (self._loop.time() - self._origin_wall) * self.speed

    def wake(self) -> None:
        """Make the pacer re-read the schedule now (call after anything that schedules events)."""
        self._wake.set()

    def catch_up(self) -> float:
        """Step every event due by now and move ``env.now`` to now; returns the new ``env.now``.

        Call it before applying a control or a fault, so that it happens at the current time and not
        at the time of the last event.
        """
        target = self.now()
        self._step_due(target, limit=None)
        if target > self.env.now:
            # Nothing is due before target any more, so run() only processes its own stop event: it is
            # the one public way to move SimPy's clock forward without an event of the model.
            self.env.run(until=target)
        return self.env.now

    async def run(self) -> None:
        """Pace the environment until cancelled."""
        env = self.env
        self._loop = asyncio.get_running_loop()
        if self._origin_wall is None:
            self._origin_wall, self._origin_sim = self._loop.time(), env.now
        while True:
            t_next = env.peek()
            if t_next == math.inf:
                # Nothing scheduled: only a control (a new session) can give us work.
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = (t_next - self._origin_sim) / self.speed - (self._loop.time() - self._origin_wall)
            if delay > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue  # re-peek: a control may have scheduled something sooner
            self.lag.add(-delay)
            stepped = self._step_due(self.now(), limit=self.batch)
            if stepped >= self.batch:
                await asyncio.sleep(0)  # behind schedule: let the writers and readers run

    def _step_due(self, target: float, limit: int | None) -> int:
        env, stepped = self.env, 0
        while env.peek() <= target and (limit is None or stepped < limit):
            try:
                env.step()
            except Exception:
                # A failed model process is a pipesim bug; it must not take the server (and every
                # other session) down with it. SimPy has already removed the event, so we can go on.
                self.errors += 1
                log.exception("a model process failed at t=%.3f; the live run goes on", env.now)
            stepped += 1
        return stepped
