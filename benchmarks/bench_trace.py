"""The trace's costs on ``baseline``: bytes per event held, DataFrame build time, Parquet and JSON Lines
save/load times and sizes, the time to turn a chunk of event rows into Arrow columns. Prints a table and writes JSON.

    python benchmarks/bench_trace.py --sessions 10000       # writes out/bench/trace.json
    python benchmarks/bench_trace.py --quick                 # the CI smoke (tests/test_benchmarks.py)

Times are wall seconds on whatever else the machine runs; compare them within one run (the DataFrames
against the run that made them, Parquet against JSON Lines), not across machines.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import pipesim
from pipesim import trace as trace_module
from pipesim.model import Simulation
from pipesim.scenario import load_scenario
from pipesim.trace.storage import ChunkedTable


def timed(action):  # noqa: ANN001, ANN201 - any callable, its result
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2_000, help="sessions of baseline (default: 2,000)")
    parser.add_argument("--json", default="out/bench/trace.json", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 100 sessions; asserts nothing about speed")
    args = parser.parse_args()
    if args.quick:
        args.sessions = 100

    scenario = load_scenario("baseline").override({"sessions.arrivals.count": args.sessions})
    sim = Simulation(scenario, seed=42)
    _, run_s = timed(sim.run)
    trace = sim.trace
    trace.close()
    res = pipesim.Results(scenario, sim.seed, trace)
    figures: dict[str, Any] = {"benchmark": "trace", "sessions": args.sessions, "events": trace.n_events,
                               "turns": trace.n_turns, "run_s": run_s}
    _, figures["frames_s"] = timed(lambda: (res.turns, res.events, res.services, res.sessions, res.kafka_windows))
    # Arrow buffers and the turns block, once every pending row is a column (what a long run holds).
    trace._events.flush()
    trace._services.flush()
    figures["trace_bytes_per_event"] = trace.nbytes() / trace.n_events
    _, figures["messages_s"] = timed(lambda: res.messages)
    # One chunk's flush (rows into Arrow columns), on the run's own first events, best of 5.
    rows = list(itertools.islice(trace_module.event_rows(trace), trace_module.CHUNK_ROWS))
    flushes = []
    for _ in range(5):
        table = ChunkedTable(trace_module.EVENT_SCHEMA, len(rows), None, None)
        table.pending.extend(rows)
        flushes.append(timed(table.flush)[1])
    figures["flush_us_per_event_row"] = min(flushes) / len(rows) * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, figures["save_parquet_s"] = timed(lambda: res.save(folder))
        _, figures["save_jsonl_s"] = timed(lambda: trace.to_jsonl(folder / "trace.jsonl"))
        figures["events_parquet_mb"] = (folder / "events.parquet").stat().st_size / 1e6
        figures["parquet_mb"] = sum(p.stat().st_size for p in folder.glob("*.parquet")) / 1e6
        figures["trace_jsonl_mb"] = (folder / "trace.jsonl").stat().st_size / 1e6
        _, figures["load_parquet_s"] = timed(lambda: (lambda r: (r.turns, r.events, r.services))(
            pipesim.Results.load(folder)))
        _, figures["load_jsonl_s"] = timed(lambda: (lambda r: (r.turns, r.events, r.services))(
            pipesim.Results.load(folder / "trace.jsonl")))
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["frames_share_of_run"] = figures["frames_s"] / run_s
    width = max(map(len, figures))
    for name, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{name:<{width}}  {shown}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
