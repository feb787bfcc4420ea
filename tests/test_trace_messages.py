"""``Results.messages`` is built column-wise from the trace, and holds exactly what the per-message path
(``sent_messages`` -> ``json.dumps``, the reference kept here) gives: same rows, dtypes and JSON bytes."""

from __future__ import annotations

import json
import math
from typing import get_args

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.scenario import Scenario
from pipesim.trace import MESSAGE_COLUMNS, Trace, sent_messages
from pipesim.vocabulary import PipelineState, ServiceState, SessionStatus

EMPTY = {"name": "empty", "sessions": {"arrivals": {"kind": "at_once", "count": 0}}}


def reference_messages(trace: Trace) -> pd.DataFrame:
    """The frame as it was built before: one ``json.dumps`` per message."""
    rows = [(tr.t, tr.session_id, msg["seq"], msg["type"], json.dumps(msg, separators=(",", ":")))
            for tr, msg in sent_messages(trace)]
    types = {"t": "float64", "session_id": "str", "seq": "int64", "type": "str", "message": "str"}
    return pd.DataFrame(rows, columns=list(MESSAGE_COLUMNS)).astype(types)  # typed when empty too


@pytest.mark.parametrize("name", ["baseline", "kafka_timeouts", "barge_in", "frontend_demo", "empty"])
def test_messages_are_the_per_message_encoding_byte_for_byte(name):
    scenario = Scenario.model_validate(EMPTY) if name == "empty" else name
    res = pipesim.simulate(scenario, seed=7, progress=False)
    got = res.messages
    pd.testing.assert_frame_equal(got, reference_messages(res.trace), check_exact=True)
    assert len(got) or name == "empty"
    if name == "kafka_timeouts":  # the run has failed turns: errors and session_ended reasons are covered
        assert got["message"].str.contains('"error":"').any()


def test_a_streamed_trace_gives_the_same_messages(tmp_path):
    res = pipesim.simulate("barge_in", seed=3, progress=False)
    res.trace.to_parquet(tmp_path)
    loaded = Trace.from_parquet(tmp_path)
    pd.testing.assert_frame_equal(loaded.messages_frame(), res.messages, check_exact=True)


EVENTS = ["session_created", "session_started", "audio", "session_stopped", "service_failed"]
text = st.text()  # any id or error: quotes, backslashes, control characters, non-ASCII, lone surrogates
numbers = st.floats(allow_nan=True, allow_infinity=True, width=64)
transition_rows = st.tuples(
    numbers, text, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 2), st.sampled_from(EVENTS), st.none(),
    st.sampled_from(sorted(get_args(SessionStatus))), st.sampled_from(sorted(get_args(PipelineState))),
    *(st.sampled_from(sorted(get_args(ServiceState))) for _ in range(3)), st.integers(0, 2**63 - 1),
    numbers, st.none() | text, st.just(math.nan))
model_events = st.tuples(numbers, text, st.integers(0, 100), st.just(-1), st.sampled_from(["first_audio"]),
                         st.none(), *(st.none() for _ in range(7)), st.none() | text, numbers)


@settings(max_examples=150, deadline=None)
@given(st.lists(transition_rows | model_events, max_size=30), st.integers(1, 8), st.integers(1, 12))
def test_any_transitions_are_encoded_as_json_dumps_would(rows, chunk_rows, part_rows):
    """Odd ids and errors (escaping, empty error -> reason "stopped"), any floats (repr, NaN, infinities),
    large integers, model events in between, several chunks (and so several dictionaries), merged into
    parts of any size."""
    trace = Trace(chunk_rows=chunk_rows)
    for row in rows:
        trace._events.append(row)
    expected = reference_messages(trace)
    pd.testing.assert_frame_equal(trace.messages_frame(), expected, check_exact=True)
    parts = [table.to_pandas() for table in trace.message_tables(rows=part_rows)]
    pd.testing.assert_frame_equal(pd.concat([expected.iloc[:0], *parts], ignore_index=True), expected, check_exact=True)
    assert trace.n_messages() == len(expected)


SMALL = {"name": "small", "seed": 5, "sessions": {"arrivals": {"kind": "at_once", "count": 12}, "turns": 2}}


@pytest.mark.parametrize("where", ["held", "streamed", "saved"])
def test_the_messages_a_part_at_a_time_are_the_messages(tmp_path, where):
    whole = pipesim.simulate(SMALL, progress=False).messages
    if where == "held":
        res = pipesim.simulate(SMALL, progress=False)
    elif where == "streamed":
        res = pipesim.simulate(SMALL, progress=False, out=tmp_path)
    else:
        pipesim.simulate(SMALL, progress=False).save(tmp_path)
        res = pipesim.Results.load(tmp_path)
    parts = list(res.iter_messages(rows=50))
    assert len(parts) > 3 and all(len(part) for part in parts)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole, check_exact=True)


def test_saving_a_run_never_builds_its_messages_frame(tmp_path, monkeypatch):
    res = pipesim.simulate(SMALL, progress=False)
    expected = res.trace.messages_frame()

    def refuse(self):
        raise AssertionError("save built the whole messages frame")

    monkeypatch.setattr(Trace, "messages_frame", refuse)
    res.save(tmp_path, csv=True)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "messages.parquet"), expected, check_exact=True)
    assert (tmp_path / "messages.csv").read_text() == expected.to_csv(index=False)  # the CSV as one frame writes it


def test_a_messages_frame_larger_than_the_memory_available_is_refused_with_the_way_out(tmp_path, monkeypatch):
    res = pipesim.simulate(SMALL, progress=False)
    res.save(tmp_path)
    n = res.trace.n_messages()
    monkeypatch.setattr(pipesim.results, "default_memory_limit", lambda: 1000)
    for run in (res, pipesim.Results.load(tmp_path)):  # built from the trace, or read from messages.parquet
        with pytest.raises(pipesim.errors.TooLargeError,
                           match=rf"{n} wire messages would take about 0 MB .* Results.iter_messages\(\)"):
            _ = run.messages
        assert sum(len(part) for part in run.iter_messages()) == n == len(res.trace.messages_frame())
