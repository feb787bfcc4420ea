"""Digests of every bundled scenario's result frames, to prove that the model's speed work moves no result.

``tests/data/model_digests.json`` holds, for each bundled scenario (``pipesim/scenarios/*.yaml``) run with
its own seed, and each of its ``turns``, ``services``, ``sessions`` and ``events`` frames: the row count, an
*ordered* digest (BLAKE2 of the per-row hashes in order: same rows, same order, same bits) and an
*unordered* one (the sum of the per-row hashes: the same set of rows). Values are hashed in a canonical
form (text as text, numbers as float64 bits), so that a change of storage (an Arrow
dictionary, a narrower integer) is not a change of result, while any changed value is.

Written from the code before the speed work (``python tests/model_digests.py --write``) and checked by
``tests/test_model_speed.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import pipesim

DIGESTS = Path(__file__).resolve().parent / "data" / "model_digests.json"
SCENARIOS = sorted(p.stem for p in (Path(pipesim.__file__).parent / "scenarios").glob("*.yaml"))
FRAMES = ("turns", "services", "sessions", "events")


def _canonical(column: pd.Series) -> pd.Series:
    """A column as plain values: text (None stays None) as object, numbers as float64."""
    if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object or pd.api.types.is_string_dtype(column):
        values = column.astype(object)
        return values.where(values.notna(), None).map(lambda v: v if v is None else str(v)).astype(object)
    # Every count and time is exact in a float64 (integers below 2**53); a missing integer is NaN.
    return pd.Series(column.to_numpy(dtype="float64", na_value=np.nan))


def frame_digest(frame: pd.DataFrame, columns: list[str] | None = None) -> dict:
    """Row count, ordered and unordered digests of ``frame`` over ``columns`` (default: all of them)."""
    columns = list(frame.columns) if columns is None else columns
    canonical = pd.DataFrame({c: _canonical(frame[c]).reset_index(drop=True) for c in columns})
    rows = pd.util.hash_pandas_object(canonical, index=False).to_numpy(dtype=np.uint64)
    return {"rows": len(frame), "columns": columns,
            "ordered": hashlib.blake2b(rows.tobytes(), digest_size=16).hexdigest(),
            "unordered": int(rows.sum(dtype=np.uint64))}


def run_frames(name: str) -> dict[str, pd.DataFrame]:
    res = pipesim.simulate(name, progress=False)
    return {frame: getattr(res, frame) for frame in FRAMES}


def digests(name: str, stored: dict | None = None) -> dict[str, dict]:
    """The digests of scenario ``name``'s frames, over the stored columns where given."""
    frames = run_frames(name)
    return {f: frame_digest(frames[f], None if stored is None else stored[f]["columns"]) for f in FRAMES}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/model_digests.py --write   (records the current code's results)")
    # One line per frame: a changed digest shows as one changed line in a diff.
    lines = [f"  {json.dumps(name)}: {{\n" + ",\n".join(f"    {json.dumps(f)}: {json.dumps(d)}"
                                                        for f, d in digests(name).items()) + "\n  }"
             for name in SCENARIOS]
    DIGESTS.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {DIGESTS}")
