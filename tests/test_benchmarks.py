"""The CI smoke of every benchmark: its ``--quick`` variant runs and writes its JSON. No speed is asserted
(shared CI machines are too noisy for that; ``make bench`` measures)."""

import json
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
