"""A trace as JSON Lines: one object per line, ``record`` saying which table (``header``, ``event``, ``turn``,
``service``, ``request``, ``kafka_window``). Written byte for byte the same for the same rows; read back with
every field checked, a bad line named by file and line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipesim import _jsonsafe
from pipesim.errors import TraceError
from pipesim.trace.columns import (
    EVENT_COLUMNS,
    KAFKA_WINDOW_COLUMNS,
    REQUEST_COLUMNS,
    SERVICE_COLUMNS,
    TURN_COLUMNS,
)

_TEXT_COLUMNS = frozenset({"session_id", "event", "service", "status", "state", "stt", "llm", "tts", "error",
                           "outcome"})


def json_lines(path: str | Path, not_json: str = "not JSON") -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON Lines file. A line that cannot be read
    (not UTF-8, not JSON, nested too deep, an integer too long) raises ``TraceError`` naming the file and
    line, ``not_json`` saying what the line was expected to be.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.jsonl")
    >>> _ = open(p, "w").write('{"a": 1}\\n\\n[2]\\n')
    >>> list(json_lines(p))
    [(1, {'a': 1}), (3, [2])]
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; bytes, so that bad UTF-8 has a line number
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TraceError(f"{path}:{number}: not UTF-8 text (a pipesim file is UTF-8 JSON Lines)") from None
            if not line.strip():
                continue
            try:
                yield number, _jsonsafe.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{number}: {not_json} ({exc.msg})") from None


_INT_COLUMNS = frozenset({"turn_id", "seq", "buffer_size", "audio_bytes", "stt_timeouts", "llm_timeouts",
                          "tts_timeouts", "busy", "queued", "capacity", "attempt"})


def _expected_type(column: str) -> tuple[type, ...]:
    # Exact types: a bool is not a number here, a float not an integer.
    return ((str,) if column in _TEXT_COLUMNS or column in ("topic", "cause")
            else (int,) if column in _INT_COLUMNS else (int, float))


_COLUMN_TYPES = {c: _expected_type(c) for c in (*EVENT_COLUMNS, *TURN_COLUMNS, *SERVICE_COLUMNS,
                                                *REQUEST_COLUMNS, *KAFKA_WINDOW_COLUMNS)}
#: The fields a request record of a JSON Lines trace must have (its times may be missing: NaN).
_REQUEST_NEEDS = ("session_id", "turn_id", "service", "attempt", "outcome")
_TYPE_NAMES = {(str,): "a string", (int,): "an integer", (int, float): "a number"}


def trace_records(path: str | Path) -> Iterator[tuple[int, str, Any]]:
    """``(line number, record, row)`` for each line of a JSON Lines trace: the header's fields as a dict, or a
    row of the ``record``'s table as a tuple in its columns' order, a value left out as the table holds it
    (None, NaN, ``seq`` -1, 0 for a turn's whole numbers). Every field is checked for its type and range
    (and a state transition for the fields it needs), so what loads can be analysed and replayed; a bad line
    raises ``TraceError`` naming the file and line.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "trace.jsonl")
    >>> _ = open(p, "w").write('{"record":"kafka_window","start":1,"end":2,"topic":"all","cause":"stall"}\\n')
    >>> list(trace_records(p))
    [(1, 'kafka_window', (1, 2, 'all', 'stall'))]
    """
    tables = {"event": EVENT_COLUMNS, "turn": TURN_COLUMNS, "service": SERVICE_COLUMNS, "request": REQUEST_COLUMNS,
              "kafka_window": KAFKA_WINDOW_COLUMNS}
    for number, obj in json_lines(path, not_json="not a pipesim trace record"):
        where = f"{path}:{number}"
        record = obj.pop("record", None) if isinstance(obj, dict) else None
        if not isinstance(record, str):
            raise TraceError(f"{where}: not a pipesim trace record (an object with a 'record' field)")
        if record == "header":
            yield number, record, obj
            continue
        if record not in tables:
            raise TraceError(f"{where}: unknown record {record[:40]!r}")
        columns = tables[record]
        unknown = set(obj) - set(columns)
        if unknown:
            raise TraceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))[:200]}")
        for column, value in obj.items():
            if type(value) not in _COLUMN_TYPES[column]:
                raise TraceError(f"{where}: {column} must be {_TYPE_NAMES[_COLUMN_TYPES[column]]}, "
                                 f"got {json.dumps(value)[:40]}")
        for column in ("t", "start", "end"):
            if not math.isfinite(obj.get(column, 0)):
                raise TraceError(f"{where}: {column} must be a finite number, got {obj[column]}")
        if record == "kafka_window" and not {"start", "end", "topic", "cause"} <= set(obj):
            raise TraceError(f"{where}: a Kafka window needs start, end, topic and cause")
        if record == "event" and not (-2**31 <= obj.get("turn_id", 0) < 2**31 and -1 <= obj.get("seq", -1) < 2**31
                                      and -2**63 <= obj.get("buffer_size", 0) < 2**63):
            raise TraceError(f"{where}: turn_id, seq or buffer_size out of range")
        if record == "service" and not all(-2**31 <= obj.get(c, 0) < 2**31 for c in ("busy", "queued", "capacity")):
            raise TraceError(f"{where}: busy, queued or capacity out of range")
        if record == "service" and not set(SERVICE_COLUMNS) <= set(obj):
            raise TraceError(f"{where}: a service sample needs {', '.join(SERVICE_COLUMNS)}")
        if record == "request" and not set(_REQUEST_NEEDS) <= set(obj):
            raise TraceError(f"{where}: a request needs {', '.join(_REQUEST_NEEDS)}")
        if record == "request" and not all(-2**31 <= obj[c] < 2**31 for c in ("turn_id", "attempt")):
            raise TraceError(f"{where}: turn_id or attempt out of range")
        row = tuple(obj.get(c, -1 if c == "seq" else None if c in _TEXT_COLUMNS or c in _INT_COLUMNS else math.nan)
                    for c in columns)
        if record == "turn":  # a turn's whole numbers are never missing in the table: 0
            row = tuple(0 if c in _INT_COLUMNS and v is None else v for c, v in zip(columns, row, strict=True))
        yield number, record, row


def write_jsonl(path: str | Path, header: dict[str, Any],
                tables: Iterable[tuple[str, Sequence[str], Iterable[Sequence[Sequence[Any]]]]]) -> None:
    """Write ``header`` (a line with ``record`` ``header``), then each of ``tables``: ``(record, columns,
    batches)``, each batch a list of columns, a line per row. Byte for byte the same for the same rows: fixed
    key order, no NaN (missing values are left out).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "trace.jsonl")
    >>> write_jsonl(p, {"seed": 1}, [("kafka_window", ("start", "end"), [[[1.0, 3.0], [2.0, math.nan]]])])
    >>> print(open(p).read(), end="")
    {"record": "header", "seed": 1}
    {"record":"kafka_window","start":1.0,"end":2.0}
    {"record":"kafka_window","start":3.0}
    """
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"record": "header", **header}, sort_keys=True) + "\n")
        for record, columns, batches in tables:
            for batch in batches:
                for row in zip(*batch, strict=True):
                    obj = {"record": record}
                    obj.update((k, _plain(v)) for k, v in zip(columns, row, strict=True)
                               if v is not None and not (isinstance(v, float) and math.isnan(v)))
                    fh.write(json.dumps(obj, separators=(",", ":")) + "\n")


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (numpy scalars from a frame become int or float)."""
    return value.item() if isinstance(value, np.generic) else value
