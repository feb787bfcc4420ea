"""What the oldest library versions pyproject.toml admits do differently, reproduced with the newest ones, so
that a regression shows in every test run and not only in scripts/wheel-check.sh's venv of old versions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipesim
from pipesim.model.budget import estimate_run
from pipesim.results import Results
from pipesim.scenario import Scenario
from pipesim.trace import Trace

RUN = {"name": "five", "sessions": {"arrivals": {"kind": "at_once", "count": 5}}}


def with_index_type(path, index_type: pa.DataType) -> None:
    """Rewrite a Parquet file with ``index_type`` indices for every dictionary column, as pyarrow 15 reads
    back a file written with int16 ones (it gives int32 indices to every dictionary column it reads)."""
    table = pq.read_table(path)
    schema = pa.schema([pa.field(f.name, pa.dictionary(index_type, f.type.value_type))
                        if pa.types.is_dictionary(f.type) else f for f in table.schema], metadata=table.schema.metadata)
    pq.write_table(table.cast(schema), path)


@pytest.mark.parametrize("index_type", [pa.int8(), pa.int32(), pa.int64()], ids=str)
def test_a_run_folder_whose_codes_read_back_with_other_index_widths_gives_the_same_frames(tmp_path, index_type):
    """Every Parquet file of a run folder that has dictionary columns (events, services, requests, ...): before,
    the lifecycle frame, and then the requests table (added later), failed to concatenate."""
    original = pipesim.simulate(RUN, seed=3, progress=False, out=tmp_path)
    expected = {"lifecycle": original.trace.lifecycle_frame(), "sessions": original.sessions,
                "events": original.events, "services": original.services, "requests": original.requests,
                "turns": original.turns, "kafka_windows": original.kafka_windows}
    assert len(expected["lifecycle"]) == 10 and len(expected["sessions"]) == 5  # created and stopped, each
    assert len(expected["requests"]) > 0
    rewritten = [path.stem for path in sorted(tmp_path.glob("*.parquet"))
                 if any(pa.types.is_dictionary(field.type) for field in pq.read_schema(path))]
    assert {"events", "services", "requests"} <= set(rewritten)
    for name in rewritten:
        with_index_type(tmp_path / f"{name}.parquet", index_type)
    (tmp_path / "sessions.parquet").unlink(missing_ok=True)  # so that Results.sessions is built from the events

    loaded = Results.load(tmp_path)
    got = {"lifecycle": Trace.from_parquet(tmp_path).lifecycle_frame(), "sessions": loaded.sessions,
           "events": loaded.events, "services": loaded.services, "requests": loaded.requests,
           "turns": loaded.turns, "kafka_windows": loaded.kafka_windows}
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 100, allow_subnormal=False)), min_size=2, max_size=8,
                unique_by=lambda point: point[0]))
def test_a_ramp_is_estimated_without_numpy_2s_trapezoid(points):
    """NumPy 1.26 has no ``np.trapezoid``; the estimate of a ramp's sessions is its area all the same, to
    the bit what ``np.trapezoid`` gives."""
    points = sorted((float(t), rate) for t, rate in points)
    times, rates = np.array(points).T
    scenario = Scenario.model_validate({"sessions": {"arrivals": {"kind": "ramp", "points": points}}})
    area = float((np.trapezoid if hasattr(np, "trapezoid") else np.trapz)(rates, times))  # trapz: NumPy 1
    with pytest.MonkeyPatch.context() as numpy_1:
        numpy_1.delattr(np, "trapezoid", raising=False)
        assert estimate_run(scenario, until=times[-1] + 1).sessions == area
