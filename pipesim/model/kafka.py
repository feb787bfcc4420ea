"""Kafka between the orchestrator and the services, in closed form.

A message produced at ``t`` is delivered after the leg's latency, unless its topic is stalled at some
moment of its flight: then it waits for the window's end. Windows come from random broker stalls
(a Poisson process drawn lazily from the broker's own stream), scheduled outages, per-service outages
and faults injected live. No SimPy event is spent on a message: the caller waits for the returned delay
or for the request timeout, whichever is sooner.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np

from pipesim.scenario import Scenario
from pipesim.vocabulary import SERVICES


class KafkaBroker:
    """Delivery delays of the three service topics.

    >>> from pipesim.scenario import Scenario
    >>> k = KafkaBroker(Scenario.model_validate({"kafka": {"outages": [{"start_s": 10, "end_s": 20}]}}),
    ...                 np.random.default_rng(0))
    >>> k.delay("stt", 5.0, 0.004)
    0.004
    >>> round(k.delay("stt", 12.0, 0.004), 3)  # held until the outage ends at 20 s
    8.004
    """

    def __init__(self, scenario: Scenario, rng: np.random.Generator,
                 record_window: Callable[[float, float, str, str], None] | None = None) -> None:
        cfg = scenario.kafka
        #: Every window that has been in force goes here, for analysis: (start, end, topic or "all", cause).
        #: The simulation passes its trace's recorder (so that a saved run keeps them); by default they are
        #: kept in :attr:`windows`.
        self.windows: list[tuple[float, float, str, str]] = []
        self._record = record_window or (lambda *window: self.windows.append(window))
        self._windows: dict[str, list[tuple[float, float]]] = {t: [] for t in SERVICES}
        self._longest = 0.0
        #: Random stalls are drawn up to here at most (an offline run's horizon): nothing after it can
        #: be seen, and a message produced far in the future would otherwise draw every stall before it.
        self.horizon = math.inf
        for outage in cfg.outages:
            for topic in outage.topics:
                self.add_window(topic, outage.start_s, outage.end_s)
        for topic in SERVICES:
            for outage in getattr(scenario.services, topic).outages:
                self.add_window(topic, outage.start_s, outage.end_s)
        self._stall_rate = cfg.stalls.rate_per_hour / 3600.0
        self._stall_duration = cfg.stalls.duration_s.sampler(rng)
        self._rng = rng
        self._next_stall = self._draw_gap(0.0)
        for topic in SERVICES:
            for start, end in self._windows[topic]:
                self._record(start, end, topic, "scheduled")

    def _draw_gap(self, t: float) -> float:
        return t + self._rng.exponential(1.0 / self._stall_rate) if self._stall_rate > 0 else float("inf")

    def add_window(self, topic: str | None, start: float, end: float, cause: str = "scheduled") -> None:
        """Stall ``topic`` (``None``: every topic) from ``start`` to ``end``."""
        for name in (SERVICES if topic is None else (topic,)):
            bisect.insort(self._windows[name], (start, end))
        self._longest = max(self._longest, end - start)
        if cause != "scheduled":
            self._record(start, end, topic or "all", cause)

    def _extend_stalls(self, until: float) -> None:
        until = min(until, self.horizon)
        while self._next_stall <= until:
            start = self._next_stall
            end = start + self._stall_duration()
            self.add_window(None, start, end, cause="random")
            self._next_stall = self._draw_gap(start)

    def _blocked_until(self, topic: str, t0: float, t1: float) -> float | None:
        """The latest end of the windows of ``topic`` that overlap [t0, t1], or None."""
        windows = self._windows[topic]
        i = bisect.bisect_right(windows, (t1, float("inf")))
        end = None
        while i > 0:
            i -= 1
            start, stop = windows[i]
            if start < t0 - self._longest:
                break
            if stop > t0 and (end is None or stop > end):
                end = stop
        return end

    def delay(self, topic: str, t: float, latency: float, give_up_after: float = math.inf) -> float:
        """Seconds from producing at ``t`` to delivery on ``topic``, for a leg of ``latency`` seconds.

        Past ``give_up_after`` seconds (the caller's timeout) the exact delay does not matter: a delay
        longer than that is returned as soon as it is known, and no stall beyond it is drawn (a huge
        latency or stall would otherwise draw stalls for years of simulated time)."""
        if latency > give_up_after:
            return latency
        self._extend_stalls(t + latency)
        arrive = t + latency
        held = False
        for _ in range(100):  # windows may chain; each pass moves past one
            end = self._blocked_until(topic, t, arrive)
            if end is None or end + latency <= arrive:
                break
            arrive, held = end + latency, True
            if arrive - t > give_up_after:
                break
            self._extend_stalls(arrive)
        return arrive - t if held else latency
