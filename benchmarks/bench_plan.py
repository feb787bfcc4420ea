"""``pipesim plan`` against the naive full grid: simulation runs, CPU and wall time to size baseline's STT, LLM
and TTS capacities for a p95 SLO, and whether both find the same cheapest configuration. Prints and writes JSON.

    python benchmarks/bench_plan.py                          # stt 2..6, llm 6..12, tts 9..16, 2 workers
    python benchmarks/bench_plan.py --llm 6..16 --replications 30
    python benchmarks/bench_plan.py --quick                  # the CI smoke (tests/test_benchmarks.py)

The plan runs first (:func:`pipesim.plan`, replications added until each verdict is clear). The grid then runs
every point of the same ranges with a fixed number of replications ``n``, the same seeds at every point (the
plan's: common random numbers), each point judged by the rule :func:`pipesim.check` applies (the same
:func:`~pipesim.slo.judge_runs`); its answer is its cheapest met point (cost: one per worker, as the plan's
default). ``n`` is by default the most replications the plan needed at any configuration: the fewest a
fixed grid needs to reach the plan's verdict where the plan needed most (known only in hindsight, so the
cheapest grid that can give the plan's answer). The grid's verdicts at fewer replications a point (3, 5)
are read from the first runs of the same points, so they cost nothing more (their runs are counted, their
CPU is not measured). Points below the plan's floor in any capacity (Erlang C: utilisation 1 or more) are
not run, as the plan does not run them: they are counted apart.

CPU is this process's and its worker processes' (``resource.getrusage``, children counted once they have
ended: each round's process pool is shut down before it is read); it depends on the machine and what else
it runs: compare plan and grid within one run. The load average is printed beside them.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import pandas as pd

import pipesim
from pipesim.gate import slo_metrics
from pipesim.planning import parse_values
from pipesim.replications import RunTask, execute_runs, replication_seeds
from pipesim.slo import judge_runs, parse_slo

SERVICES = ("stt", "llm", "tts")
#: Fewer replications a point at which the grid's verdicts are also read (from the first runs of each point).
FEWER = (3, 5)


def cpu_seconds() -> float:
    """User and system CPU of this process and of its ended children."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_grid(scenario: pipesim.Scenario, slo: str, points: list[dict[str, int | float]], replications: int,
             until: float, warmup_s: float, workers: int, chunk: int = 16) -> list[pd.DataFrame]:
    """Each point's ``replications`` runs (one row per run, the figures :func:`pipesim.check` judges), every
    point with the same seeds; a line on stdout every ``chunk`` points."""
    seeds = replication_seeds(scenario.seed, replications)
    metrics = functools.partial(slo_metrics, warmup_s=warmup_s)
    out: list[pd.DataFrame] = []
    started = time.perf_counter()
    for first in range(0, len(points), chunk):
        batch = points[first:first + chunk]
        tasks = [RunTask(scenario.override(dict(values)), seed, warmup_s, until, metrics)
                 for values in batch for seed in seeds]
        rows = execute_runs(tasks, workers, None, False, "grid")
        for i in range(len(batch)):
            out.append(pd.DataFrame([{"seed": s, **row} for s, row in
                                     zip(seeds, rows[i * replications:(i + 1) * replications], strict=True)]))
        print(f"  grid: {len(out)} of {len(points)} points, {time.perf_counter() - started:.0f} s", flush=True)
    return out


def grid_answer(points: list[dict[str, int | float]], runs: list[pd.DataFrame], slo: str, replications: int,
                recommended: dict[str, int | float] | None) -> dict[str, Any]:
    """The grid's verdicts from each point's first ``replications`` runs, and its cheapest met points."""
    slos = [parse_slo(slo)]
    verdicts = [judge_runs(slos, point_runs.iloc[:replications])[0].verdict for point_runs in runs]
    met = [v for v, verdict in zip(points, verdicts, strict=True) if verdict == "met"]
    cheapest_cost = min((sum(v.values()) for v in met), default=None)
    at_recommended = next((verdict for v, verdict in zip(points, verdicts, strict=True) if v == recommended), None)
    return {"replications": replications, "points": len(points), "runs": len(points) * replications,
            "verdicts": {k: verdicts.count(k) for k in ("met", "violated", "undecided")},
            "cheapest_cost": cheapest_cost, "cheapest": [v for v in met if sum(v.values()) == cheapest_cost],
            "verdict_at_recommended": at_recommended}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stt", default="2..6", help="STT capacities, LOW..HIGH or V1,V2,... (default 2..6)")
    parser.add_argument("--llm", default="6..12", help="LLM capacities (default 6..12)")
    parser.add_argument("--tts", default="9..16", help="TTS capacities (default 9..16)")
    parser.add_argument("--slo", default="e2e_latency_p95 <= 2s", help="the SLO (default: e2e_latency_p95 <= 2s)")
    parser.add_argument("--replications", type=int, default=None,
                        help="the grid's runs per point (default: the most the plan needed at any configuration)")
    parser.add_argument("--until", type=float, default=150.0, help="seconds simulated per run (default 150)")
    parser.add_argument("--warmup", type=float, default=30.0, help="warm-up left out, seconds (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="processes, for the plan and the grid (default 2)")
    parser.add_argument("--json", default="out/bench/plan.json", help="write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 2 values per service, 40 s runs, in this process; asserts nothing about speed")
    args = parser.parse_args()
    if args.quick:
        args.stt, args.llm, args.tts, args.until, args.warmup, args.workers = "4..5", "8..9", "12..13", 40, 10, 1
    ranges = {f"services.{svc}.capacity": parse_values(f"services.{svc}.capacity", getattr(args, svc))
              for svc in SERVICES}
    scenario = pipesim.load_scenario("baseline")
    load_before = os.getloadavg()

    cpu, wall = cpu_seconds(), time.perf_counter()
    plan = pipesim.plan(scenario, [args.slo], vary=ranges, until=args.until, warmup_s=args.warmup,
                        workers=args.workers, progress=False)
    plan_cpu, plan_wall = cpu_seconds() - cpu, time.perf_counter() - wall
    most = max(len(e.result.runs) for e in plan.evaluations)
    replications = args.replications or most
    print(f"plan: {plan.recommended} (cost {plan.cost}), {plan.runs} runs and a pilot, {plan_wall:.1f} s wall, "
          f"{plan_cpu:.1f} s CPU; the grid next, {replications} runs a point", flush=True)

    floors = {d.path: d.floor for d in plan.dimensions}
    every = [dict(zip(ranges, p, strict=True)) for p in itertools.product(*ranges.values())]
    points = [v for v in every if all(v[path] >= floors[path] for path in v)]
    cpu, wall = cpu_seconds(), time.perf_counter()
    runs = run_grid(scenario, args.slo, points, replications, args.until, args.warmup, args.workers)
    grid_cpu, grid_wall = cpu_seconds() - cpu, time.perf_counter() - wall

    grid = {**grid_answer(points, runs, args.slo, replications, plan.recommended),
            "below_floor": len(every) - len(points), "cpu_s": grid_cpu, "wall_s": grid_wall}
    fewer = {str(n): grid_answer(points, runs, args.slo, n, plan.recommended) for n in FEWER if n < replications}
    figures: dict[str, Any] = {
        "benchmark": "plan", "scenario": scenario.name, "slo": args.slo, "until": args.until, "warmup_s": args.warmup,
        "workers": args.workers, "ranges": {path: list(values) for path, values in ranges.items()},
        "floors": floors, "load_average": [load_before[0], os.getloadavg()[0]],
        "plan": {"runs": plan.runs + 1, "configurations": len(plan.evaluations), "most_replications": most,
                 "cpu_s": plan_cpu, "wall_s": plan_wall, "recommended": plan.recommended, "cost": plan.cost},
        "grid": grid, "grid_with_fewer": fewer,
        "grid_verdict_at_recommended": grid["verdict_at_recommended"],
        "same_cost": plan.cost == grid["cheapest_cost"],
        # Same answer: the plan's recommendation is one of the grid's cheapest met points (or both found none).
        "same_answer": plan.recommended in grid["cheapest"] if grid["cheapest"] else plan.recommended is None,
        "runs_ratio": (plan.runs + 1) / grid["runs"],
    }

    def short(values: dict[str, int | float] | None) -> str:
        return "-" if values is None else " ".join(f"{p.split('.')[1]} {v:g}" for p, v in values.items())

    def answer(g: dict[str, Any]) -> str:
        found = ", ".join(map(short, g["cheapest"])) if g["cheapest"] else "none met"
        cost = f" (cost {g['cheapest_cost']:g})" if g["cheapest"] else ""
        return f"{found}{cost}; {g['verdicts']}; at the plan's answer: {g['verdict_at_recommended']}"

    print(f"{scenario.name}, {args.slo}, runs of {args.until:g} s (warm-up {args.warmup:g} s), {args.workers} "
          f"worker(s), load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"floors (Erlang C, utilisation below 1): {short(floors)}; {grid['below_floor']} of {len(every)} grid "
          f"points below them are not run")
    print(f"{'':16}{'points':>7}{'runs':>7}{'CPU s':>8}{'wall s':>8}  answer")
    print(f"{'plan':16}{len(plan.evaluations):>7}{plan.runs + 1:>7}{plan_cpu:>8.1f}{plan_wall:>8.1f}  "
          f"{short(plan.recommended)} (cost {plan.cost}; at most {most} runs at a configuration)")
    for n, g in fewer.items():
        print(f"{'grid, ' + n + ' a point':16}{g['points']:>7}{g['runs']:>7}{'':>8}{'':>8}  {answer(g)}")
    print(f"{f'grid, {replications} a point':16}{grid['points']:>7}{grid['runs']:>7}{grid_cpu:>8.1f}"
          f"{grid_wall:>8.1f}  {answer(grid)}")
    print(f"plan / grid ({replications} a point): {figures['runs_ratio']:.3f} of the runs, "
          f"{plan_cpu / grid_cpu:.3f} of the CPU; same cost: {figures['same_cost']}, same configuration: "
          f"{figures['same_answer']}; the plan's runs count its pilot")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
