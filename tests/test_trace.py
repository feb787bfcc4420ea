"""The trace is the one complete record of a run: columnar, the same frames as before it was, saved and
loaded without loss (Parquet or JSON Lines), streamed to Parquet, bounded for the live server."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trace_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim import analysis, plots, trace
from pipesim.cli import main as cli_main
from pipesim.live import load_replay
from pipesim.model import Simulation
from pipesim.model.budget import check_budget, estimate_run
from pipesim.results import Results
from pipesim.scenario import Scenario, bundled_scenarios
from pipesim.state import Transition
from pipesim.trace import EVENT_SCHEMA, SERVICE_SCHEMA, TURN_COLUMNS, Trace, storage

#: Where the columnar trace changed a dtype on purpose: codes (categoricals) instead of strings.
CATEGORICAL = {"events": {"session_id", "event", "service", "status", "state", "stt", "llm", "tts", "error"},
               "services": {"service"}}
EMPTY = {"name": "empty", "sessions": {"arrivals": {"kind": "at_once", "count": 0}}}


@pytest.fixture(scope="module")
def runs() -> dict[str, Results]:
    return {name: pipesim.simulate(name, seed=seed, progress=False) for name, seed in trace_reference.RUNS.items()}


@pytest.mark.parametrize("name", trace_reference.RUNS)
def test_every_frame_holds_the_values_it_held_before_the_trace_was_columnar(runs, name):
    """tests/data/trace_reference.json was written by tests/trace_reference.py from the list-of-tuples
    trace (commit 9061704); the same runs must give the same values, and the same dtypes but for codes."""
    reference = json.loads(trace_reference.REFERENCE.read_text())[name]
    got = trace_reference.digests(runs[name])
    for frame, ref in reference.items():
        assert got[frame]["rows"] == ref["rows"], frame
        assert got[frame]["values"] == ref["values"], frame
        changed = {c for c, t in got[frame]["dtypes"].items() if t != ref["dtypes"][c]}
        assert changed <= CATEGORICAL.get(frame, set()), (frame, changed)
        assert all(got[frame]["dtypes"][c] == "category" for c in changed)
    assert sorted(got) == sorted(reference)


def test_the_reference_covers_every_bundled_scenario():
    assert sorted(trace_reference.RUNS) == bundled_scenarios()


def figure_inputs(res: Results) -> dict[str, Any]:
    """The DataFrames (and values) pipesim.plots draws from, as it computes them."""
    end = res.end_time
    return {
        "breakdown": analysis.breakdown(res.turns),
        "percentile_breakdown": analysis.percentile_breakdown(res.turns),
        "latency_over_time": analysis.latency_over_time(res.turns, 10.0),
        "utilisation": analysis.utilisation(res.services, 10.0, end=end),
        "settled_services": analysis.settled_services(res.services),
        "incident_counts": analysis.incident_counts(res.events, 10.0),
        "incidents": analysis.incidents(res.events),
        "state_durations": analysis.state_durations(res.events, end=end),
        "windows": plots._windows(res),
        "summary": res.summary(),
        "interesting_session": plots.interesting_session(res),
        "end_time": end,
    }


def assert_same_run(a: Results, b: Results, frames: tuple[str, ...] = trace_reference.FRAMES[:-1]) -> None:
    for name in frames:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)
    others = figure_inputs(b)
    for name, value in figure_inputs(a).items():
        other = others[name]
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, other, check_exact=True, obj=name)
        else:
            assert value == other, name


@pytest.mark.parametrize("name", ["kafka_timeouts", "many_chunks", "empty"])
def test_save_and_load_give_back_every_frame_and_every_figure_input(runs, tmp_path, monkeypatch, name):
    if name == "many_chunks":  # each chunk has its own string dictionaries: they must meet again on load
        monkeypatch.setattr(storage, "CHUNK_ROWS", 4_096)
        res = pipesim.simulate("barge_in", seed=5, progress=False)
        monkeypatch.undo()
        assert len(res.trace._events.batches) > 5
    else:
        res = runs[name] if name in runs else pipesim.simulate(EMPTY, progress=False)
    written = {p.name for p in res.save(tmp_path, jsonl=True)}
    assert {"events.parquet", "turns.parquet", "sessions.parquet", "services.parquet", "messages.parquet",
            "kafka_windows.parquet", "scenario.json", "trace.jsonl"} <= written
    loaded = Results.load(tmp_path)
    assert (loaded.scenario, loaded.seed) == (res.scenario, res.seed)
    assert_same_run(res, loaded)
    # The derived tables are rebuilt from the trace alone the same (not only read back from their files).
    rebuilt = Results(loaded.scenario, loaded.seed, Trace.from_parquet(tmp_path))
    assert_same_run(res, rebuilt)
    # JSON Lines keeps everything too (a trace without a single event is refused, as replay would).
    if name == "empty":
        with pytest.raises(trace.TraceError, match="no events in this trace"):
            Results.load(tmp_path / "trace.jsonl")
    else:
        assert_same_run(res, Results.load(tmp_path / "trace.jsonl"))
    # A loaded run saved where it was read from (its events stay in the file they are read from).
    loaded.save(tmp_path)
    assert_same_run(res, Results.load(tmp_path))
    if name == "kafka_timeouts":
        assert len(loaded.kafka_windows) == 3  # the scenario's outage, on each topic


def test_a_run_held_in_memory_is_saved_in_row_groups_not_in_its_chunks(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 5_000)  # the run's trace holds chunks of CHUNK_ROWS (4,096) rows
    monkeypatch.setattr(pipesim.results, "MESSAGE_GROUP_ROWS", 5_000)
    res = runs["kafka_timeouts"]
    res.save(tmp_path)
    for name in ("events", "services", "messages"):
        meta = pq.read_metadata(tmp_path / f"{name}.parquet")
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sizes[:-1] == [5_000] * (len(sizes) - 1) and 0 < sizes[-1] <= 5_000, name
    assert_same_run(res, Results.load(tmp_path))


def test_a_run_streamed_to_parquet_in_chunks_is_the_run_held_in_memory(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "CHUNK_ROWS", 1_000)
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 5_000)
    held = []

    def spy(self: storage.ChunkedTable) -> None:
        held.append(len(self.pending) + sum(b.num_rows for b in self.batches) + self._unwritten_rows)
        flush(self)

    flush = storage.ChunkedTable.flush
    monkeypatch.setattr(storage.ChunkedTable, "flush", spy)
    streamed = pipesim.simulate("kafka_timeouts", seed=42, progress=False, out=tmp_path)
    monkeypatch.undo()
    events = pq.ParquetFile(tmp_path / "events.parquet")
    assert events.metadata.num_rows == len(runs["kafka_timeouts"].events)
    assert events.metadata.num_row_groups == math.ceil(events.metadata.num_rows / 5_000)
    assert max(held) <= 5_000 + 1_000  # never more than a row group and a chunk in memory
    assert_same_run(runs["kafka_timeouts"], streamed)
    assert_same_run(runs["kafka_timeouts"], Results.load(tmp_path))


def test_replay_reads_a_run_folder_from_parquet_or_json_lines(tmp_path):
    res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 3}, "turns": 2}}, progress=False)
    res.save(tmp_path / "parquet")
    res.save(tmp_path / "jsonl", jsonl=True)
    (tmp_path / "jsonl" / "events.parquet").unlink()
    expected = [(t, json.loads(m)) for t, m in zip(res.messages["t"], res.messages["message"], strict=True)]
    assert load_replay(tmp_path / "parquet") == expected
    assert load_replay(tmp_path / "jsonl") == expected


def test_pipesim_run_out_writes_parquet_and_json_lines_on_request(tmp_path, capsys):
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"sessions": {"arrivals": {"kind": "at_once", "count": 2}, "turns": 1}}))
    assert cli_main(["run", str(scenario), "--out", str(tmp_path / "a")]) == 0
    assert cli_main(["run", str(scenario), "--out", str(tmp_path / "b"), "--jsonl"]) == 0
    assert not (tmp_path / "a" / "trace.jsonl").exists() and (tmp_path / "b" / "trace.jsonl").exists()
    assert_same_run(Results.load(tmp_path / "a"), Results.load(tmp_path / "b"))
    assert (tmp_path / "a" / "turns.parquet").read_bytes() == (tmp_path / "b" / "turns.parquet").read_bytes()
    assert "trace.jsonl" in capsys.readouterr().out


# Rows into columns ---------------------------------------------------------------------------------------
FEW = st.sampled_from(["idle", "busy", "stt", "llm", "tts", "audio", ""])  # a column's few repeated values
NUMBERS = {"double": st.floats(allow_nan=True, allow_infinity=True),  # NaN, infinities and -0.0 included
           "int32": st.integers(-2**31, 2**31 - 1), "int64": st.integers(-2**63, 2**63 - 1)}


def row_values(schema: pa.Schema) -> st.SearchStrategy[tuple]:
    """A row as the model or a trace file gives it: any value each column's type takes, None where it may."""
    def column(field: pa.Field) -> st.SearchStrategy[Any]:
        if pa.types.is_dictionary(field.type):
            return st.none() | FEW | st.text(max_size=4)
        values = NUMBERS[str(field.type)]
        return values if field.name in ("t", "turn_id", "seq", "busy", "queued", "capacity") else st.none() | values
    return st.tuples(*map(column, schema))


def expected_column(values: list[Any], field: pa.Field) -> pa.Array:
    """What a chunk's column must be: numbers as they are; strings as codes into the distinct values in the
    order they first appear (so that a chunk's dictionary, and a Parquet file of it, never depend on more)."""
    if not pa.types.is_dictionary(field.type):
        return pa.array(values, type=field.type)
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    codes = pa.array([None if v is None else distinct.index(v) for v in values], field.type.index_type)
    return pa.DictionaryArray.from_arrays(codes, pa.array(distinct, pa.string()))


def bits(column: pa.Array) -> tuple[list[bool], Any]:
    """A column's nulls and values, floats bit for bit (NaN equal to itself, -0.0 not to 0.0)."""
    if pa.types.is_dictionary(column.type):
        return bits(column.indices), (column.dictionary.type, column.dictionary.to_pylist())
    values = column.fill_null(0).to_numpy(zero_copy_only=False)
    return column.is_null().to_pylist(), (values.view(np.int64) if values.dtype == np.float64 else values).tolist()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_chunk_holds_its_rows_values_column_by_column(data):
    for schema in (EVENT_SCHEMA, SERVICE_SCHEMA):
        rows = data.draw(st.lists(row_values(schema), max_size=40))
        if schema is EVENT_SCHEMA:  # the state manager's rows are Transition tuples, the model's plain ones
            rows = [Transition(*r) if data.draw(st.booleans()) else r for r in rows]
        table = storage.ChunkedTable(schema, chunk_rows=10**6, limit=None, sink=None)
        table.pending.extend(rows)
        table.flush()
        got = table.table()
        assert got.schema == schema and got.num_rows == len(rows)
        for i, field in enumerate(schema):
            column = got.column(i).combine_chunks() if rows else pa.array([], field.type)
            assert bits(column) == bits(expected_column([r[i] for r in rows], field)), field.name


def test_a_chunk_with_too_many_different_values_for_its_codes_is_one_clear_error():
    t = Trace(chunk_rows=40_000)
    for i in range(2**15):
        t.model_event(float(i), "s1", 1, f"event-{i}")
    with pytest.raises(trace.TraceError, match="^event: more than 32,767 different values in 32,768 events$"):
        t.events_frame()


# Memory --------------------------------------------------------------------------------------------------
def test_a_trace_event_costs_well_under_200_bytes():
    sim = Simulation(Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 300}}}),
                     seed=1)
    sim.run()
    for table in (sim.trace._events, sim.trace._services, sim.trace._requests):
        table.flush()
    assert sim.trace.n_events > 40_000
    requests = sum(batch.nbytes for batch in sim.trace._requests.batches)  # ~4 a turn, ~40 bytes each
    assert requests / len(sim.trace._requests) < 50
    assert (sim.trace.nbytes() - requests) / sim.trace.n_events < 100


def test_streaming_lets_the_budget_take_a_run_that_would_not_fit_in_memory():
    big = Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 100_000}}})
    held, streamed = estimate_run(big), estimate_run(big, streaming=True)
    assert streamed.events == held.events and streamed.bytes < held.bytes
    limit = (held.bytes + streamed.bytes) / 2
    check_budget(big, memory_limit=limit, streaming=True)
    with pytest.raises(pipesim.ScenarioError, match="would need about"):
        check_budget(big, memory_limit=limit)


# A bounded trace (the live server) -------------------------------------------------------------------------
def test_a_limited_trace_keeps_the_most_recent_rows_and_counts_the_rest():
    t = Trace(limit=1_600)  # and 100 turns
    for i in range(16_000):
        t.model_event(float(i), "s", i, "speech_ended", value=1.0)
        t.service_sample(float(i), "llm", 1, 0, 4)
    rows = [t.add_turn([f"s{i}", i, "complete", None, *[float(i)] * (len(TURN_COLUMNS) - 4)]) for i in range(1_000)]
    assert t.events_frame()["t"].tolist() == [float(i) for i in range(14_400, 16_000)]
    assert t.services_frame()["t"].tolist() == [float(i) for i in range(14_400, 16_000)]
    assert t.turns_frame()["turn_id"].tolist() == list(range(900, 1_000))
    assert t.dropped == {"events": 14_400, "turns": 900, "services": 14_400}
    assert t.n_events == 16_000 and t.n_turns == 1_000
    t.update_turn(rows[0], [None] * len(TURN_COLUMNS))  # forgotten: nothing to patch, no error
    t.update_turn(rows[-1], ["s999", 999, "failed", "late", *[0.5] * (len(TURN_COLUMNS) - 4)])
    assert t.turns_frame().iloc[-1][["outcome", "error", "e2e_latency"]].tolist() == ["failed", "late", 0.5]
    assert t.nbytes() < 2 * 1_600 * 400


def test_a_simulation_with_a_trace_limit_keeps_the_tail_of_the_same_run():
    scn = Scenario.model_validate({"sessions": {"arrivals": {"kind": "at_once", "count": 30}}})
    whole, bounded = Simulation(scn, seed=2), Simulation(scn, seed=2, trace_limit=1_000)
    whole.run()
    bounded.run()
    events = whole.trace.events_frame()
    assert bounded.trace.dropped["events"] == len(events) - 1_000 > 0
    pd.testing.assert_frame_equal(bounded.trace.events_frame().astype({c: str for c in CATEGORICAL["events"]}),
                                  events.tail(1_000).reset_index(drop=True).astype(
                                      {c: str for c in CATEGORICAL["events"]}))
    turns = whole.trace.turns_frame()
    pd.testing.assert_frame_equal(bounded.trace.turns_frame(), turns.tail(len(bounded.trace.turns_frame()))
                                  .reset_index(drop=True))


def test_a_bad_run_folder_is_one_clear_error(tmp_path):
    (tmp_path / "events.parquet").write_text("not parquet")
    with pytest.raises(trace.TraceError, match="not a pipesim run folder"):
        Results.load(tmp_path)


def test_the_live_server_keeps_a_bounded_trace_by_default():
    from pipesim.cli import build_parser
    from pipesim.live import LiveServer
    from pipesim.live.server import DEFAULT_TRACE_LIMIT

    assert LiveServer("frontend_demo", port=0).sim.trace._events.limit == DEFAULT_TRACE_LIMIT
    assert LiveServer("frontend_demo", port=0, trace_limit=None).sim.trace._events.limit is None
    assert build_parser().parse_args(["serve"]).trace_limit == DEFAULT_TRACE_LIMIT
    assert build_parser().parse_args(["serve", "--trace-limit", "500"]).trace_limit == 500
