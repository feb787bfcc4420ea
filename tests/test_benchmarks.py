"""The CI smoke of every benchmark: its ``--quick`` variant runs and writes its JSON. No speed is asserted
(shared CI machines are too noisy for that; ``make bench`` measures)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: (script, the JSON it writes under out/bench/). One line per benchmark.
QUICK_RUNS = [
    ("bench_model.py", "model.json"),
    ("bench_live.py", "live.json"),
    ("bench_trace.py", "trace.json"),
    ("bench_plan.py", "plan.json"),
]


def test_every_benchmark_has_a_quick_run():
    assert sorted(script for script, _ in QUICK_RUNS) == sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize(("script", "written"), QUICK_RUNS)
def test_quick_run_writes_its_json(script, written, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "bench" / written).read_text(encoding="utf-8"))
    assert result["benchmark"] == written.removesuffix(".json")
    assert proc.stdout.strip(), "a benchmark prints its table"


def test_model_quick_run_measures_both_sides_and_every_size(tmp_path):
    out = tmp_path / "model.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "bench_model.py"), "--quick", "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text(encoding="utf-8"))
    figures = result["side_by_side"]["figures"]
    assert figures["skeleton_turns_per_s"] > 0 and figures["pipesim_turns_per_s"] > 0
    assert figures["bare_events_per_s"] > 0 and figures["turns_ratio"] > 0
    rows = result["sizes"]
    assert [row["sessions"] for row in rows] == [20, 40]
    assert all(row["turns"] > 0 and row["trace_events"] > row["turns"] and row["peak_rss_mib"] > 0 for row in rows)
    # Where pipesim's CPU goes: the runs with parts taken away simulated the very same thing.
    for r in result["side_by_side"]["rounds"]:
        same = {(r[part]["events"], r[part]["turns_digest"]) for part in ("pipesim", "pipesim_no_trace",
                                                                        "simulation_alone")}
        assert len(same) == 1
    # The shares are differences of timings: on a noisy machine a quick run's can fall below 0 or above 1, so
    # only that they were computed is checked here (the benchmark's own figures are what is read).
    assert all(math.isfinite(figures[k]) for k in ("trace_share", "manager_share", "simulation_share"))


@pytest.mark.parametrize("scenario", ["baseline", "kafka_timeouts", "poor_audio", "barge_in", "load_spike"])
def test_the_simulation_alone_is_the_same_simulation(scenario):
    """The benchmark's bare state manager (turn numbers and the retry budget only) and turns-only trace
    leave pipesim's model simulating the same turns, failures and retries included."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    import pipesim

    scn = pipesim.load_scenario(scenario)
    if getattr(scn.sessions.arrivals, "count", None) is not None:
        scn = scn.override({"sessions.arrivals.count": min(scn.sessions.arrivals.count, 60)})
    full = bench_model.run_pipesim(scn)
    alone = bench_model.run_pipesim(scn, without=("trace", "manager"))
    assert full["turns"] > 0
    assert (alone["events"], alone["turns_digest"]) == (full["events"], full["turns_digest"])


def test_plan_quick_run_sets_the_plan_beside_the_grid(tmp_path):
    out = tmp_path / "plan.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "bench_plan.py"), "--quick", "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text(encoding="utf-8"))
    plan, grid = result["plan"], result["grid"]
    assert grid["points"] + grid["below_floor"] == math.prod(len(values) for values in result["ranges"].values())
    assert grid["runs"] == grid["points"] * grid["replications"] and sum(grid["verdicts"].values()) == grid["points"]
    # By default the grid gives every point as many runs as the plan needed where it needed most.
    assert grid["replications"] == plan["most_replications"]
    assert all(g["runs"] == g["points"] * int(n) for n, g in result["grid_with_fewer"].items())
    assert plan["runs"] > plan["configurations"] > 0 and plan["cpu_s"] > 0 and grid["cpu_s"] > 0
    # The same-answer check ran: the plan's recommendation set against the grid's cheapest met points.
    assert result["same_answer"] == (plan["recommended"] in grid["cheapest"] if grid["cheapest"] else
                                     plan["recommended"] is None)
    assert result["same_cost"] == (plan["cost"] == grid["cheapest_cost"])
    assert result["grid_verdict_at_recommended"] in ("met", "violated", "undecided")
