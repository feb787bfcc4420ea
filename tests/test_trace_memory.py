"""What a big run holds: a streamed trace counts what it wrote, the frames are built one Arrow column at a
time, and the ``sessions`` table and the run's end time come without building the events frame."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import pipesim
from pipesim import analysis
from pipesim import trace as trace_module
from pipesim.results import Results
from pipesim.trace import Trace, storage

SMALL = {"sessions": {"arrivals": {"kind": "at_once", "count": 20}}}


def test_a_streamed_or_loaded_trace_counts_what_it_wrote_and_holds_no_turns(tmp_path):
    held = pipesim.simulate(SMALL, seed=3, progress=False)
    streamed = pipesim.simulate(SMALL, seed=3, progress=False, out=tmp_path)
    assert streamed.trace.n_events == held.trace.n_events == len(held.events) > 0
    # Closed, a streamed trace lets its turns go (they are in turns.parquet) and reads them back the same.
    assert streamed.trace._turns.rows == 0 and streamed.trace.n_turns == held.trace.n_turns == len(held.turns)
    pd.testing.assert_frame_equal(streamed.turns, held.turns, check_exact=True)
    assert Trace.from_parquet(tmp_path).n_turns == len(held.turns)
    assert Trace.from_parquet(tmp_path).n_events == len(held.events)
    assert Trace.from_parquet(tmp_path).dropped == {"events": 0, "turns": 0, "services": 0}


def test_sessions_and_end_time_come_without_the_events_frame(tmp_path):
    for res in (pipesim.simulate("barge_in", seed=5, progress=False),
                pipesim.simulate("barge_in", seed=5, progress=False, out=tmp_path)):
        sessions, end = res.sessions, res.end_time
        res.utilisation()
        assert "events" not in res.__dict__  # never built
        pd.testing.assert_frame_equal(sessions, analysis.sessions_frame(res.events, res.turns), check_exact=True)
        assert end == float(res.events["t"].max())
    empty = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 0}}}, progress=False)
    assert empty.end_time == 0.0 and empty.sessions.empty


# In a fresh process: Arrow's memory pool records its peak since the process started.
_PEAK_OF_EVENTS_FRAME = """
import json, sys
import pyarrow as pa
from pipesim.trace import Trace
frame = Trace.from_parquet(sys.argv[1]).events_frame()
pool = pa.default_memory_pool()
print(json.dumps({"rows": len(frame), "arrow_peak": pool.max_memory(), "arrow_held": pool.bytes_allocated()}))
"""


def test_the_events_frame_of_a_run_folder_is_built_one_arrow_column_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 20_000)
    trace = Trace(sink=tmp_path)
    for i in range(200_000):
        trace.model_event(i * 0.01, f"s{i % 500}", i // 500, "speech_ended", value=0.5)
    trace.close()
    whole = pq.read_table(tmp_path / "events.parquet").nbytes
    out = subprocess.run([sys.executable, "-c", _PEAK_OF_EVENTS_FRAME, str(tmp_path)], capture_output=True,
                         text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["rows"] == 200_000
    # Some columns of the frame are Arrow's memory (to_pandas without a copy): what counts is the peak above
    # what the frame holds at the end. The whole table (12 MB) was read at once, its dictionaries unified:
    # 24 MB above. Now a column at a time: the widest (t or value, 1.6 MB) and its row groups.
    assert figures["arrow_peak"] - figures["arrow_held"] < whole / 4, (figures, whole)
    assert Results.load(tmp_path).trace.n_events == 200_000


def test_the_budget_counts_only_the_sessions_in_flight_at_full_size():
    from pipesim.model.budget import BYTES_PER_SESSION, estimate_run

    baseline = pipesim.load_scenario("baseline")
    spread = baseline.override({"sessions.arrivals.count": 100_000})  # 2 a second: ~130 at a time
    at_once = baseline.override({"sessions.arrivals": {"kind": "at_once", "count": 100_000}})
    streamed, all_at_once = estimate_run(spread, streaming=True), estimate_run(at_once, streaming=True)
    assert streamed.events == all_at_once.events
    assert all_at_once.bytes - streamed.bytes > 0.9 * 100_000 * BYTES_PER_SESSION
    # A streamed 100,000-session run peaked at 694 MiB, 571 MiB (0.6 GB) over the interpreter and libraries
    # (docs/performance.md): estimated a little above that, not at the 2.6 GB of every session kept.
    assert 0.6e9 < streamed.bytes < 1.2e9


def test_a_run_too_big_to_hold_streams_to_a_folder_of_its_own_deleted_with_it(monkeypatch):
    from test_trace import assert_same_run

    held = pipesim.simulate("barge_in", seed=5, progress=False)
    assert held.trace._events.sink is None  # a small run stays in memory
    monkeypatch.setattr(pipesim.results, "HOLD_LIMIT", 1)  # every run is "too big"
    spilled = pipesim.simulate("barge_in", seed=5, progress=False)
    folder = spilled.trace._events.sink.parent
    assert folder.name.startswith("pipesim-run-") and (folder / "turns.parquet").exists()
    assert_same_run(held, spilled)
    del spilled
    gc.collect()
    assert not folder.exists()


def test_reading_a_run_folder_a_batch_at_a_time_holds_one_row_group_not_the_file(tmp_path):
    # Arrow's pre_buffer (its default) keeps every row group read so far: a 100,000-session run's events file
    # (340 MB) ended up held whole while its messages were built a part at a time.
    groups, rows = 24, 20_000
    table = pa.table({"x": np.random.default_rng(0).random(groups * rows)})  # random floats: no compression
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=rows)
    group_bytes = rows * 8
    base, most = pa.total_allocated_bytes(), 0
    for batch in trace_module.read_batches(tmp_path / "f.parquet", 1_000):
        most = max(most, pa.total_allocated_bytes() - base)
        del batch
    assert most < 4 * group_bytes, f"held {most / group_bytes:.1f} row groups at once"
