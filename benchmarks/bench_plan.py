"""``pipesim plan`` against the naive full grid: simulation runs and CPU time to size baseline's STT, LLM and
TTS capacities for a p95 SLO, and whether both find the same cheapest configuration. Prints and writes JSON.

    python benchmarks/bench_plan.py                          # stt 2..6, llm 6..12, tts 9..16: 280 points
    python benchmarks/bench_plan.py --llm 6..16 --replications 5
    python benchmarks/bench_plan.py --quick                  # the CI smoke (tests/test_benchmarks.py)

The grid judges every point with :func:`pipesim.check` at a fixed number of replications (the same seeds at
every point, as ``pipesim sweep``'s common random numbers); the plan with the same function, adding
replications until each verdict is clear. The grid's answer is its cheapest point whose verdict is ``met``
(cost: one per worker, as the plan's default). Both run here, in this process (``workers=1``), so that
``time.process_time()`` is all the CPU each used; CPU seconds depend on the machine and what else it runs:
compare the two within one run. The default grid is 280 points, 840 runs of about a second of CPU each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import pipesim
from pipesim.planning import parse_values

SERVICES = ("stt", "llm", "tts")


def grid_answer(scenario: pipesim.Scenario, slo: str, ranges: dict[str, tuple[int | float, ...]],
                replications: int, until: float, warmup_s: float) -> dict[str, Any]:
    """Every point of the grid judged by ``check`` with ``replications`` runs; the cheapest met points."""
    verdicts = []
    for point in itertools.product(*ranges.values()):
        values = dict(zip(ranges, point, strict=True))
        result = pipesim.check(scenario.override(values), [slo], replications=replications, until=until,
                               warmup_s=warmup_s)
        verdicts.append((values, result.verdict))
    met = [v for v, verdict in verdicts if verdict == "met"]
    cheapest_cost = min((sum(v.values()) for v in met), default=None)
    return {"points": len(verdicts), "runs": len(verdicts) * replications,
            "verdicts": {k: [verdict for _, verdict in verdicts].count(k) for k in ("met", "violated", "undecided")},
            "cheapest_cost": cheapest_cost,
            "cheapest": [v for v in met if sum(v.values()) == cheapest_cost],
            "verdict_of": {tuple(v.values()): verdict for v, verdict in verdicts}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stt", default="2..6", help="STT capacities, LOW..HIGH or V1,V2,... (default 2..6)")
    parser.add_argument("--llm", default="6..12", help="LLM capacities (default 6..12)")
    parser.add_argument("--tts", default="9..16", help="TTS capacities (default 9..16)")
    parser.add_argument("--slo", default="e2e_latency_p95 <= 2s", help="the SLO (default: e2e_latency_p95 <= 2s)")
    parser.add_argument("--replications", type=int, default=3, help="the grid's runs per point (default 3)")
    parser.add_argument("--until", type=float, default=150.0, help="seconds simulated per run (default 150)")
    parser.add_argument("--warmup", type=float, default=30.0, help="warm-up left out, seconds (default 30)")
    parser.add_argument("--json", default="out/bench/plan.json", help="write the figures here")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 2 values per service, 2 runs per point, 40 s runs; asserts nothing about speed")
    args = parser.parse_args()
    if args.quick:
        args.stt, args.llm, args.tts, args.replications, args.until, args.warmup = "4..5", "8..9", "12..13", 2, 40, 10
    ranges = {f"services.{svc}.capacity": parse_values(f"services.{svc}.capacity", getattr(args, svc))
              for svc in SERVICES}
    scenario = pipesim.load_scenario("baseline")

    started = time.process_time()
    plan = pipesim.plan(scenario, [args.slo], vary=ranges, until=args.until, warmup_s=args.warmup, progress=False)
    plan_cpu = time.process_time() - started
    started = time.process_time()
    grid = grid_answer(scenario, args.slo, ranges, args.replications, args.until, args.warmup)
    grid_cpu = time.process_time() - started

    verdict_of = grid.pop("verdict_of")
    figures: dict[str, Any] = {
        "benchmark": "plan", "scenario": scenario.name, "slo": args.slo, "until": args.until, "warmup_s": args.warmup,
        "ranges": {path: list(values) for path, values in ranges.items()}, "load_average": os.getloadavg()[0],
        "plan": {"runs": plan.runs + 1, "configurations": len(plan.evaluations), "cpu_s": plan_cpu,
                 "recommended": plan.recommended, "cost": plan.cost},
        "grid": {**grid, "replications": args.replications, "cpu_s": grid_cpu},
    }
    # Where the answers differ, the grid's fixed replications may have left the plan's answer undecided.
    figures["grid_verdict_at_recommended"] = (verdict_of.get(tuple(plan.recommended.values()))
                                              if plan.recommended else None)
    figures["same_cost"] = plan.cost == grid["cheapest_cost"]
    # Same answer: the plan's recommendation is one of the grid's cheapest met points (or both found none).
    figures["same_answer"] = plan.recommended in grid["cheapest"] if grid["cheapest"] else plan.recommended is None
    plan_fig = figures["plan"]
    print(f"{scenario.name}, {args.slo}, runs of {args.until:g} s (warm-up {args.warmup:g} s), "
          f"load average {figures['load_average']:.1f}")
    print(f"{'':6}{'configurations':>16}{'runs':>8}{'CPU s':>9}  answer")
    print(f"{'plan':6}{plan_fig['configurations']:>16}{plan_fig['runs']:>8}{plan_cpu:>9.1f}  "
          f"{plan.recommended} (cost {plan.cost})")
    print(f"{'grid':6}{grid['points']:>16}{grid['runs']:>8}{grid_cpu:>9.1f}  "
          f"{grid['cheapest']} (cost {grid['cheapest_cost']}; {args.replications} runs a point)")
    print(f"plan runs count its pilot; grid verdicts {grid['verdicts']}; same cost: {figures['same_cost']}, "
          f"same configuration: {figures['same_answer']}; the grid's verdict at the plan's recommendation: "
          f"{figures['grid_verdict_at_recommended']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
