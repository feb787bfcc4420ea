"""A run's fingerprint (``turns_sha256``, :func:`pipesim.replications.turns_digest`) is a function of its
turns table alone: the bytes its docstring describes, hashed.

* A reference written from that description, in plain Python (``struct``, ``str.encode``: no pandas, numpy
  or pyarrow), gives the same digest on generated tables (hypothesis), and a small fixed table has a pinned
  digest: a change of pandas, pyarrow or numpy that altered it fails here.
* How pandas holds a column does not count (object, ``str``, categorical or Arrow text; int32 or int64;
  float32 widened), nor the index, nor a trip through ``turns.parquet`` (``pd.read_parquet``,
  ``Results.load``); one value, a column's name or its kind changed gives another digest.
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesim.replications import run_metrics, turns_digest
from pipesim.results import Results, simulate

#: A column of the reference: (name, kind, values), None for a missing value.
Column = tuple[str, str, list[Any]]


def reference_digest(columns: list[Column], rows: int) -> str:
    """``turns_digest`` as its docstring describes it, one value at a time."""

    def int64(n: int) -> bytes:
        return struct.pack("<q", n)

    out = [b"pipesim-table/1", int64(rows), int64(len(columns))]
    for name, kind, values in columns:
        for text in (name, kind):
            out += [int64(len(text.encode())), text.encode()]
        if kind == "float":
            out += [b"\x00\x00\x00\x00\x00\x00\xf8\x7f" if v is None or math.isnan(v) else struct.pack("<d", v)
                    for v in values]
        elif kind in ("int", "bool"):
            missing = [i for i, v in enumerate(values) if v is None]
            out += [int64(0 if v is None else int(v)) for v in values]
            out += [int64(len(missing)), *map(int64, missing)]
        else:
            encoded = [None if v is None else v.encode() for v in values]
            out += [int64(-1 if e is None else len(e)) for e in encoded]
            out += [e for e in encoded if e is not None]
    return hashlib.sha256(b"".join(out)).hexdigest()


def series(kind: str, values: list[Any]) -> pd.Series:
    """A reference column as pandas holds it by default (a nullable type where a value is missing)."""
    if kind == "float":
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    if kind in ("int", "bool"):
        nullable = None in values
        return pd.Series(values, dtype={"int": "Int64" if nullable else "int64",
                                        "bool": "boolean" if nullable else "bool"}[kind])
    return pd.Series(values, dtype=object)


def frame(columns: list[Column], rows: int) -> pd.DataFrame:
    return pd.DataFrame({name: series(kind, values) for name, kind, values in columns}, index=range(rows))


FIXED: list[Column] = [
    ("session_id", "string", ["sim-0", "sim-1", None, "séance-ü"]),
    ("turn_id", "int", [0, 1, 2, -(2**63)]),
    ("e2e_latency", "float", [0.75, -0.0, None, 1e-300]),
    ("complete", "bool", [True, False, True, False]),
    ("error", "string", [None, "", "kafka_timeout", None]),
]
#: The digest of FIXED: pinned, so that a new version of a library that changed it fails this test.
FIXED_DIGEST = "4f40f10dbc5340eae128c9a76edd9755b699e6539871ed59353c0a34c9aafe5e"


def test_a_fixed_table_has_its_pinned_digest() -> None:
    assert reference_digest(FIXED, 4) == FIXED_DIGEST
    assert turns_digest(frame(FIXED, 4)) == FIXED_DIGEST


names = st.text(min_size=1, max_size=8)
kinds_and_values = st.one_of(
    st.tuples(st.just("float"), st.lists(st.none() | st.floats(allow_nan=True, allow_infinity=True), min_size=5,
                                         max_size=5)),
    st.tuples(st.just("int"), st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=5, max_size=5)),
    st.tuples(st.just("bool"), st.lists(st.none() | st.booleans(), min_size=5, max_size=5)),
    st.tuples(st.just("string"), st.lists(st.none() | st.text(), min_size=5, max_size=5)),
)
tables = st.lists(st.tuples(names, kinds_and_values), max_size=5, unique_by=lambda c: c[0]).map(
    lambda cols: [(name, kind, values) for name, (kind, values) in cols])


@settings(max_examples=150, deadline=None)
@given(tables)
def test_the_digest_is_the_documented_bytes(columns: list[Column]) -> None:
    rows = 5 if columns else 0
    assert turns_digest(frame(columns, rows)) == reference_digest(columns, rows)


@settings(max_examples=100, deadline=None)
@given(tables.filter(bool), st.data())
def test_one_value_changed_changes_the_digest(columns: list[Column], data: st.DataObject) -> None:
    col = data.draw(st.integers(0, len(columns) - 1))
    row = data.draw(st.integers(0, 4))
    name, kind, values = columns[col]
    new = data.draw(st.sampled_from(_others(kind, values[row])))
    changed = list(values)
    changed[row] = new
    other = [*columns[:col], (name, kind, changed), *columns[col + 1:]]
    assert turns_digest(frame(other, 5)) != turns_digest(frame(columns, 5))


def _others(kind: str, value: Any) -> list[Any]:
    """Values of ``kind`` other than ``value`` (missing among them when ``value`` is not)."""
    candidates = {"float": [None, 0.0, -0.0, 1.5, math.inf], "int": [None, 0, 1, -1],
                  "bool": [None, True, False], "string": [None, "", "a", "é"]}[kind]

    def same(a: Any, b: Any) -> bool:
        if kind == "float" and (a is None or math.isnan(a)) and (b is None or math.isnan(b)):
            return True  # every NaN is a missing value
        if kind == "float" and a is not None and b is not None:
            return struct.pack("<d", a) == struct.pack("<d", b)
        return a is b if None in (a, b) else a == b

    return [c for c in candidates if not same(c, value)]


@pytest.mark.parametrize("recast", [
    lambda t: t.astype({"session_id": "category", "error": "category"}),
    lambda t: t.astype({"session_id": "string", "error": "string"}),
    lambda t: t.astype({"session_id": object, "error": object}),
    lambda t: t.astype({"session_id": pd.ArrowDtype(__import__("pyarrow").string())}),
    lambda t: t.astype({"turn_id": "Int64", "complete": "boolean"}),
    lambda t: t.set_axis(list("wxyz"), axis=0),  # the index is not part of the table
], ids=["categorical", "string", "object", "arrow", "nullable int and bool", "index"])
def test_how_pandas_holds_a_column_does_not_count(recast: Any) -> None:
    table = frame(FIXED, 4)
    assert turns_digest(recast(table)) == FIXED_DIGEST


def test_narrow_numbers_are_widened() -> None:
    narrow = pd.DataFrame({"n": pd.Series([1, -2], dtype="int8"), "x": pd.Series([0.5, math.nan], dtype="float32")})
    assert turns_digest(narrow) == turns_digest(narrow.astype({"n": "int64", "x": "float64"}))


def test_the_schema_counts() -> None:
    table = frame(FIXED, 4)
    assert turns_digest(table.rename(columns={"error": "errors"})) != FIXED_DIGEST
    assert turns_digest(table.astype({"turn_id": "float64"})) != FIXED_DIGEST  # the same numbers, another kind
    assert turns_digest(table[[*reversed(table.columns)]]) != FIXED_DIGEST
    with pytest.raises(TypeError, match="'when'"):
        turns_digest(table.assign(when=pd.Timestamp("2024-01-01")))


def test_a_run_read_back_from_turns_parquet_has_its_fingerprint(tmp_path: Path) -> None:
    res = simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 30}}, "kafka": {"request_timeout_s": 0.3}},
                   seed=3, progress=False)
    assert res.turns["error"].notna().any() and res.turns["error"].isna().any()  # text with missing values
    fingerprint = run_metrics(res)["turns_sha256"]
    res.save(tmp_path)
    assert turns_digest(pd.read_parquet(tmp_path / "turns.parquet")) == fingerprint
    assert turns_digest(pd.read_parquet(tmp_path / "turns.parquet", dtype_backend="pyarrow")) == fingerprint
    assert run_metrics(Results.load(tmp_path))["turns_sha256"] == fingerprint
