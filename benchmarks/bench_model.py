"""Offline model speed against bare SimPy, measured in one run (machines are shared and noisy).

Prints: wall time of the ``baseline`` scenario, SimPy events it scheduled, its event rate, the event rate
of a bare SimPy model (processes that only yield timeouts) on this machine right now, and the ratio.
The ratio is the figure to watch: pipesim's model does real work per event (the state manager, the trace,
numpy draws), so it will be below 1; a drop means overhead crept into the inner loop.

    .venv/bin/python benchmarks/bench_model.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import resource
import time

import simpy

import pipesim
from pipesim.model import Simulation


def bare_simpy_rate(n_events: int) -> float:
    """Events per second of SimPy alone: 1,000 processes yielding timeouts."""
    env = simpy.Environment()
    per_process = max(1, n_events // 1000)

    def proc(env: simpy.Environment, i: int):
        for k in range(per_process):
            yield env.timeout(0.001 * ((i + k) % 7 + 1))

    for i in range(1000):
        env.process(proc(env, i))
    start = time.perf_counter()
    env.run()
    elapsed = time.perf_counter() - start
    return next(env._eid) / elapsed  # SimPy's event id counter: every scheduled event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    scn = pipesim.load_scenario("scenarios/baseline.yaml").override({"sessions.arrivals.count": args.sessions})

    start = time.perf_counter()
    sim = Simulation(scn)
    sim.run()
    run_s = time.perf_counter() - start
    events = next(sim.env._eid)
    frames_start = time.perf_counter()
    res = pipesim.Results(scn, sim.seed, sim.trace)
    _ = res.turns, res.sessions, res.services
    frames_s = time.perf_counter() - frames_start

    bare = bare_simpy_rate(events)
    rate = events / run_s
    turns = len(sim.trace.turns)
    print(f"baseline, {args.sessions} sessions: {turns} turns, {len(sim.trace.events)} trace events")
    print(f"  model run           {run_s:8.3f} s   ({1e6 * run_s / max(turns, 1):.0f} us per turn)")
    print(f"  DataFrames          {frames_s:8.3f} s   (turns, sessions, services)")
    print(f"  SimPy events        {events:8d}     ({rate:,.0f} events/s)")
    print(f"  bare SimPy          {bare:12,.0f} events/s")
    print(f"  ratio model/bare    {rate / bare:8.2f}")
    print(f"  peak RSS            {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
