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
    return pd.DataFrame(rows, columns=list(MESSAGE_COLUMNS))


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
@given(st.lists(transition_rows | model_events, max_size=30), st.integers(1, 8))
def test_any_transitions_are_encoded_as_json_dumps_would(rows, chunk_rows):
    """Odd ids and errors (escaping, empty error -> reason "stopped"), any floats (repr, NaN, infinities),
    large integers, model events in between, several chunks (and so several dictionaries)."""
    trace = Trace(chunk_rows=chunk_rows)
    for row in rows:
        trace._events.append(row)
    pd.testing.assert_frame_equal(trace.messages_frame(), reference_messages(trace), check_exact=True)
