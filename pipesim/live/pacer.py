"""The pacer: the offline SimPy environment, stepped in real time (the second of the "two clocks").

There is one model. Offline, ``env.run()`` goes as fast as it can; live, :class:`Pacer` sleeps until
the wall clock reaches the next event (``env.peek()``, scaled by ``speed``) and steps every event that
is due. Controls from clients are applied "now": :meth:`Pacer.catch_up` first moves the simulated clock
to the time the wall clock says it is, so that a control lands between the events it really falls
between, then :meth:`Pacer.wake` makes the pacer look again at the schedule (the control may have
scheduled something sooner than what the pacer was waiting for).

Everything runs on one asyncio loop, so the model, the state manager and the server never need a lock.

The clock can also be driven (the admin API): :meth:`Pacer.pause` freezes simulated time (controls are
still applied, at the paused time), :meth:`Pacer.resume` and :meth:`Pacer.set_speed` re-anchor the wall
origin so that simulated time never jumps, and :meth:`Pacer.advance` / :meth:`Pacer.run_until` step a
paused clock as fast as possible, yielding to the event loop every ``batch`` events so that clients
get their messages meanwhile.

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
import contextlib
import logging
import math
from collections.abc import Callable, Iterator

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
        #: While paused nothing moves: the wall clock no longer drives simulated time.
        self.paused = False
        # True while an event is stepped: what its callbacks apply (a stub's delayed answer) happens at its time.
        self._stepping = False

    def now(self) -> float:
        """The simulated time the wall clock says it is (``env.now`` before the pacer started or while
        it is paused)."""
        if self.paused or self._origin_wall is None or self._loop is None:
            return self.env.now
        return self._origin_sim + (self._loop.time() - self._origin_wall) * self.speed

    def behind(self) -> float:
        """Wall seconds the pacer is behind right now: how long ago the oldest event still waiting to be
        stepped was due (0 when nothing due is waiting, and while paused).

        >>> import simpy
        >>> env = simpy.Environment(); _ = env.timeout(1.0)
        >>> pacer = Pacer(env, speed=2.0)
        >>> pacer.now = lambda: 1.5        # as if the wall clock said t = 1.5 s: the event is 0.5 s late
        >>> pacer.behind()                 # in wall seconds, at 2x
        0.25
        """
        late = self.now() - self.env.peek()
        return late / self.speed if late > 0 and not self.paused else 0.0

    @property
    def origin(self) -> tuple[float | None, float]:
        """``(wall, sim)``: simulated time ``sim`` happened at loop time ``wall`` (None before the pacer ran);
        ``t`` happens at ``wall + (t - sim) / speed``."""
        return self._origin_wall, self._origin_sim

    def wake(self) -> None:
        """Make the pacer re-read the schedule now (call after anything that schedules events)."""
        self._wake.set()

    @contextlib.contextmanager
    def applying(self) -> Iterator[float]:
        """Around a control, a fault or a new session applied to the model: first :meth:`catch_up` (it
        happens now; the block gets the time), then :meth:`wake` (what was applied may have scheduled an
        event sooner than the one the pacer sleeps until), also when the block raises.

        >>> import simpy
        >>> pacer = Pacer(simpy.Environment())
        >>> pacer.now = lambda: 2.5        # as if the wall clock said t = 2.5 s
        >>> with pacer.applying() as now:  # e.g. sim.control(...) here: it happens at t = 2.5
        ...     now, pacer.env.now
        (2.5, 2.5)
        """
        now = self.catch_up()
        try:
            yield now
        finally:
            self.wake()

    def catch_up(self) -> float:
        """Step the events due by now and move ``env.now`` to now; returns the new ``env.now``.

        Call it before applying a control or a fault, so that it happens at the current time and not
        at the time of the last event. While paused it does nothing: the control lands at the paused time.

        It steps at most ``batch`` events: when the server has fallen further behind than that (starved
        of CPU), the control lands at the model's time (``env.now``, after the events stepped so far)
        and :meth:`run` works off the rest in batches, yielding between them. Stepping the whole backlog
        here would hold the event loop for as long as the backlog takes, once per handshake or control
        (1,000 clients connecting to a server that is behind: /stats silent for 10 s).

        >>> import simpy
        >>> env = simpy.Environment()
        >>> for t in range(500): _ = env.timeout(t / 1000)
        >>> pacer = Pacer(env, batch=100)
        >>> pacer.now = lambda: 1.0        # as if the wall clock said t = 1 s: all 500 events are due
        >>> pacer.catch_up(), env.peek()   # 100 stepped: the control lands at the 100th, the rest wait
        (0.099, 0.1)
        """
        return self._catch_up(self.batch)

    def _catch_up(self, limit: int | None) -> float:
        if self.paused or self._stepping:  # (stepping from inside a step would run later events first)
            return self.env.now
        target = self.now()
        if self._step_due(target, limit) == limit and self.env.peek() <= target:
            return self.env.now  # still behind: the pacer loop steps the rest
        if target > self.env.now:
            # Nothing is due before target any more, so run() only processes its own stop event: it is
            # the one public way to move SimPy's clock forward without an event of the model.
            self.env.run(until=target)
        return self.env.now

    @property
    def next_event_t(self) -> float | None:
        """Simulated time of the next scheduled event, or None when nothing is scheduled."""
        t_next = self.env.peek()
        return None if t_next == math.inf else t_next

    def pause(self) -> float:
        """Freeze simulated time where the wall clock says it is now; returns it."""
        if not self.paused:
            # Every due event, however many: an operator's pause (admin API) is rare, and where it
            # lands must not depend on how far behind the server happened to be.
            self._catch_up(None)
            self.paused = True
        return self.env.now

    def resume(self) -> float:
        """Let the wall clock drive simulated time again, from where it stands (no jump)."""
        if self.paused:
            self.paused = False
            self._anchor()
            self.wake()
        return self.env.now

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on (simulated time does not jump)."""
        if not speed > 0 or speed == math.inf:
            raise ValueError(f"speed must be > 0 and finite, got {speed}")
        self._catch_up(None)  # as pause(): rare, and exact
        self.speed = float(speed)
        self._anchor()
        self.wake()

    async def advance(self, seconds: float) -> float:
        """Pause, then move simulated time by exactly ``seconds``, stepping every event on the way as
        fast as possible; returns the new ``env.now``.

        >>> import asyncio, simpy
        >>> env = simpy.Environment(); _ = env.timeout(2.0)
        >>> asyncio.run(Pacer(env).advance(3.5))
        3.5
        """
        if not seconds >= 0 or seconds == math.inf:
            raise ValueError(f"seconds must be >= 0 and finite, got {seconds}")
        self.pause()
        target = self.env.now + seconds
        while self._step_due(target, limit=self.batch) >= self.batch:
            await asyncio.sleep(0)  # let the writers send what the batch produced
        if target > self.env.now:
            self.env.run(until=target)
        return self.env.now

    async def run_until(self, done: Callable[[], bool], max_t: float = math.inf,
                        wall_timeout: float = math.inf) -> bool:
        """Pause, then step events one by one as fast as possible until ``done()`` is true (True), or
        the next event lies beyond simulated time ``max_t`` or nothing is scheduled or ``wall_timeout``
        wall seconds have passed (False). The clock stays paused where it stopped.

        >>> import asyncio, simpy
        >>> env = simpy.Environment(); _ = env.timeout(2.0); _ = env.timeout(5.0)
        >>> asyncio.run(Pacer(env).run_until(lambda: env.now >= 2.0)), env.now
        (True, 2.0)
        """
        self.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wall_timeout
        env, stepped = self.env, 0
        while not done():
            if env.peek() > max_t or env.peek() == math.inf or loop.time() > deadline:
                return False
            self._step_due(env.peek(), limit=1)
            stepped += 1
            if stepped % self.batch == 0:
                await asyncio.sleep(0)
        return True

    def _anchor(self) -> None:
        if self._loop is not None:
            self._origin_wall, self._origin_sim = self._loop.time(), self.env.now

    async def run(self) -> None:
        """Pace the environment until cancelled."""
        env = self.env
        self._loop = asyncio.get_running_loop()
        if self._origin_wall is None:
            self._origin_wall, self._origin_sim = self._loop.time(), env.now
        while True:
            if self.paused:  # only resume() (or set_speed) moves the clock again
                self._wake.clear()
                await self._wake.wait()
                continue
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
        self._stepping = True
        try:
            while env.peek() <= target and (limit is None or stepped < limit):
                try:
                    env.step()
                except Exception:
                    # A failed model process is a pipesim bug; it must not take the server (and every
                    # other session) down with it. SimPy has already removed the event, so we can go on.
                    self.errors += 1
                    log.exception("a model process failed at t=%.3f; the live run goes on", env.now)
                stepped += 1
        finally:
            self._stepping = False
        return stepped
