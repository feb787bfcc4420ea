"""Digests of every Results frame of a few runs: the reference the columnar trace must reproduce.

``python tests/trace_reference.py`` rewrites ``tests/data/trace_reference.json`` from the model as it is
now (run it only when the model's results are meant to change, and say so in the commit);
``python tests/trace_reference.py NAME...`` adds or rewrites those runs only.

baseline, kafka_timeouts and load_spike were recorded from the list-of-tuples trace (9061704); the other
bundled scenarios from the columnar trace as it was at 9656823, before the trace's memory work.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).parent / "data" / "trace_reference.json"
RUNS = {"baseline": 42, "kafka_timeouts": 42, "load_spike": 42, "barge_in": 42, "poor_audio": 42,
        "frontend_demo": 42}
FRAMES = ("turns", "events", "sessions", "services", "messages", "kafka_windows", "summary")


def frames(res) -> dict[str, pd.DataFrame]:  # noqa: ANN001 - a pipesim.Results
    return {name: res.summary() if name == "summary" else getattr(res, name) for name in FRAMES}


def values_digest(df: pd.DataFrame) -> str:
    """SHA-256 of a frame's columns, index and values, whatever dtype holds the strings (a categorical or
    string column hashes as its values, a missing one as None)."""
    plain = df.copy()
    for column in plain.columns:
        if isinstance(plain[column].dtype, pd.CategoricalDtype | pd.StringDtype) or plain[column].dtype == object:
            plain[column] = plain[column].astype(object).where(plain[column].notna(), None)
    h = hashlib.sha256(json.dumps([list(map(str, plain.columns)), str(plain.index.dtype)]).encode())
    h.update(pd.util.hash_pandas_object(plain, index=True).to_numpy().tobytes())
    return h.hexdigest()


def digests(res) -> dict[str, dict[str, object]]:  # noqa: ANN001
    return {name: {"values": values_digest(df), "rows": len(df),
                   "dtypes": {str(c): str(t) for c, t in df.dtypes.items()}}
            for name, df in frames(res).items()}


def compute(names: list[str] | None = None) -> dict[str, dict[str, dict[str, object]]]:
    import pipesim

    return {name: digests(pipesim.simulate(name, seed=RUNS[name], progress=False)) for name in names or RUNS}


if __name__ == "__main__":
    names = sys.argv[1:]
    reference = json.loads(REFERENCE.read_text()) if names else {}
    reference.update(compute(names))
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE}", file=sys.stderr)
