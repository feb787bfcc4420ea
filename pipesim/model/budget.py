"""How much memory an offline run will need, estimated from the scenario before it runs.

A run keeps every event in its trace (see :mod:`pipesim.trace`), so its memory grows with
sessions x turns x events per turn, and every user utterance adds one ``audio`` report per
``audio.metadata_interval_s``. A run that streams its trace to Parquet (``simulate(..., out=DIR)``,
``pipesim run --out``) holds at most a row group of events at a time, and its turn rows. A scenario that
asks for millions of sessions or turns is refused up front with a message that says so, rather than
filling the machine's memory and being killed.

>>> from pipesim.scenario import Scenario
>>> est = estimate_run(Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 100}}}))
>>> round(est.sessions), round(est.turns_per_session)
(100, 5)
>>> est.bytes < 50_000_000
True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from pipesim.distributions import MAX_DRAW
from pipesim.scenario import MAX_UTTERANCE_S, AtOnce, Poisson, Scenario, ScenarioError
from pipesim.trace import CHUNK_ROWS, ROW_GROUP_ROWS

#: Measured on ``baseline`` (10,000 sessions, CPython 3.11, tracemalloc; docs/performance.md): the columnar
#: trace holds ~70 bytes per event (a transition or model event, with its share of turn rows and service
#: samples); the model's own live objects add about as much again while the run goes on. A session (its
#: random streams and samplers) takes ~20 KB while it runs; offline, an ended session's memory is released
#: but for its state-manager record and the like (~300 bytes measured; counted generously).
BYTES_PER_EVENT = 150
BYTES_PER_SESSION = 20_000
BYTES_PER_ENDED_SESSION = 1_000
#: How long a session lasts, per turn, beyond the user's own speech and thinking: the bot's reply (the
#: pipeline's latency and the reply's audio; ~9 s a turn in ``baseline``), counted generously, so that
#: the sessions in flight (arrival rate x session length) are not underestimated.
REPLY_ALLOWANCE_S = 15.0
#: Streaming: the events held before a row group is written (a row group and a chunk of pending rows, at
#: ~400 bytes each as Python tuples), and a turn row, which stays in memory until the end of the run.
STREAMED_EVENTS = ROW_GROUP_ROWS + CHUNK_ROWS
BYTES_PER_PENDING_EVENT = 400
BYTES_PER_TURN = 400
#: Events of one turn besides its audio reports (~21 in ``baseline``), and of one session besides its turns.
EVENTS_PER_TURN = 22
EVENTS_PER_SESSION = 4
#: Share of the memory available when the run starts that it may take by default: the DataFrames built
#: from the trace afterwards need room too.
MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class RunEstimate:
    """What a run of a scenario will hold: sessions, turns per session, events and bytes (estimates)."""

    sessions: float
    turns_per_session: float
    events_per_turn: float
    events: float
    bytes: float


def _mean(dist: object) -> float:
    """A distribution's mean, as the model will see its draws (finite, at most ``MAX_DRAW``)."""
    value = float(getattr(dist, "mean", math.nan))
    return min(value, MAX_DRAW) if not math.isnan(value) else MAX_DRAW


def _sessions(scenario: Scenario, horizon: float) -> float:
    arrivals = scenario.sessions.arrivals
    if isinstance(arrivals, AtOnce):
        return float(arrivals.count)  # all at t=0, whatever the horizon
    if isinstance(arrivals, Poisson):
        count = math.inf if arrivals.count is None else arrivals.count
        span = min(arrivals.duration_s or math.inf, horizon)
        return min(count, arrivals.rate_per_s * span)
    times = np.array([p[0] for p in arrivals.points])
    rates = np.array([p[1] for p in arrivals.points])
    end = min(float(times[-1]), horizon)
    if end <= times[0]:
        return 0.0
    grid = np.append(times[times < end], end)  # the area under the piecewise-linear rate up to ``end``
    rate = np.interp(grid, times, rates)
    return float((np.diff(grid) * (rate[1:] + rate[:-1]) / 2.0).sum())  # np.trapezoid's sum (NumPy >= 2 only)


def estimate_run(scenario: Scenario, until: float | None = None, streaming: bool = False) -> RunEstimate:
    """Estimate the sessions, turns, events and memory of running ``scenario`` offline until ``until``
    (default: its ``duration_s``, or until its sessions end), from the means of its distributions.

    With a horizon, a session has at most as many turns as fit in it (each at least an utterance, the
    end-of-utterance delay and the user's think time). ``streaming``: the trace goes to Parquet as the run
    goes, so only its turn rows and one row group of events count.
    """
    horizon = until if until is not None else (scenario.duration_s or math.inf)
    s, audio = scenario.sessions, scenario.audio
    utterance = min(max(_mean(s.utterance_s), audio.chunk_s), MAX_UTTERANCE_S)
    cycle = utterance + _mean(s.end_of_utterance_delay_s) + _mean(s.think_time_s)
    turns = min(max(1.0, _mean(s.turns)), horizon / cycle + 1)

    def reports(speech: float) -> float:
        interval = audio.metadata_interval_s
        return 1 + (min(speech, horizon) / interval if interval else 0)

    per_turn = EVENTS_PER_TURN + reports(utterance)
    sessions = _sessions(scenario, horizon)
    in_flight = _in_flight(scenario, sessions, turns * (cycle + REPLY_ALLOWANCE_S))
    events = sessions * (EVENTS_PER_SESSION + turns * per_turn)
    all_turns = sessions * turns
    for script in s.scripted:
        sessions += 1
        in_flight += 1  # a scripted session lasts as long as its timeline: count it as in flight throughout
        events += EVENTS_PER_SESSION + sum(EVENTS_PER_TURN + reports(min(step.speak or 0.0, MAX_UTTERANCE_S))
                                           for step in script.timeline)
        all_turns += len(script.timeline)
    trace = (all_turns * BYTES_PER_TURN + min(events, STREAMED_EVENTS) * BYTES_PER_PENDING_EVENT if streaming
             else events * BYTES_PER_EVENT)
    model = in_flight * BYTES_PER_SESSION + (sessions - in_flight) * BYTES_PER_ENDED_SESSION
    return RunEstimate(sessions, turns, per_turn, events, model + trace)


def _in_flight(scenario: Scenario, sessions: float, session_s: float) -> float:
    """The most sessions running at once (Little's law at the peak arrival rate: rate x session length),
    at most all of them; an offline run releases a session's streams and samplers when it ends."""
    arrivals = scenario.sessions.arrivals
    if isinstance(arrivals, AtOnce):
        return sessions
    rate = arrivals.rate_per_s if isinstance(arrivals, Poisson) else max(p[1] for p in arrivals.points)
    return min(sessions, rate * session_s)


def default_memory_limit() -> int:
    """The memory a run may take by default: ``MEMORY_FRACTION`` of what the machine has available now
    (``MemAvailable`` on Linux; elsewhere half the physical memory, or 4 GiB if that is unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * MEMORY_FRACTION)
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def check_budget(scenario: Scenario, until: float | None = None, memory_limit: int | None = None,
                 streaming: bool = False) -> RunEstimate:
    """Raise :class:`~pipesim.scenario.ScenarioError` if running ``scenario`` until ``until`` would need
    more than ``memory_limit`` bytes (default: :func:`default_memory_limit`); return the estimate.

    >>> from pipesim.scenario import Scenario
    >>> check_budget(Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 1_000_000}}}),
    ...              memory_limit=2**30)
    Traceback (most recent call last):
    pipesim.errors.ScenarioError: scenario 'unnamed': a run would need about 44.2 GB of memory ...
    """
    est = estimate_run(scenario, until, streaming)
    limit = default_memory_limit() if memory_limit is None else memory_limit
    if est.bytes > limit:
        raise ScenarioError([
            f"scenario {scenario.name!r}: a run would need about {est.bytes / 1e9:,.1f} GB of memory "
            f"(~{est.sessions:,.0f} sessions x {est.turns_per_session:,.1f} turns x {est.events_per_turn:,.0f} "
            f"events), more than the {limit / 1e9:,.1f} GB it may take (memory_limit); lower "
            f"sessions.arrivals (count, rate_per_s, duration_s or points), sessions.turns, or the audio "
            f"reports per utterance (audio.metadata_interval_s), or stop it sooner (duration_s, --until)"
            + ("" if streaming else "; or stream the trace to Parquet (simulate(..., out=DIR), pipesim run --out)")])
    return est
