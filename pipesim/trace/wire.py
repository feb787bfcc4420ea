"""The wire messages of a trace's transitions, rendered column by column in Arrow: byte for byte what the live
server sends (its templates, :mod:`pipesim.protocol`), a million messages in seconds, never one at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipesim.protocol import CREATED_TEMPLATE, ENDED_TEMPLATE, UPDATE_TEMPLATE, json_string

#: Events per part when the wire messages are built (:meth:`Trace.message_tables`): each part has a fixed
#: set-up cost in Arrow, so parts are large; ~20 MB of JSON text each.
MESSAGE_BATCH_ROWS = 65_536
#: Messages per row group of ``messages.parquet``: ~80 MB of JSON text (a message is ~300 bytes, an event row
#: ~100), what saving a run holds of its messages at a time.
MESSAGE_GROUP_ROWS = 262_144

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as json.dumps writes them


def _texts(column: pa.Array) -> tuple[list[str | None], np.ndarray]:
    """The distinct values of a string column (then None, for nulls) and each row's index into them."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    values = column.dictionary.to_pylist()
    return [*values, None], column.indices.cast(pa.int64()).fill_null(len(values)).to_numpy()


def _json_strings(column: pa.Array, replace: Callable[[str | None], str | None] | None = None) -> pa.Array:
    """Each row's value of a string column as JSON (after ``replace``, if given), ``null`` for None; every
    distinct value escaped once."""
    values, codes = _texts(column)
    if replace is not None:
        values = list(map(replace, values))
    return pa.array(["null" if v is None else json_string(v) for v in values], pa.string()).take(codes)


def _json_numbers(column: pa.Array) -> pa.Array:
    """Each row's number as ``json.dumps`` writes it: an int's digits, a float's ``repr`` (NaN and
    infinities as ``NaN``, ``Infinity``); every distinct float (bit for bit: 0.0 is not -0.0) formatted once."""
    if pa.types.is_integer(column.type):
        return column.cast(pa.string()).fill_null("null")
    bits = pa.array(column.to_numpy(zero_copy_only=False).view(np.int64)).dictionary_encode()
    values = bits.dictionary.to_numpy().view(np.float64)
    text = list(map(float.__repr__, values.tolist()))
    if not np.isfinite(values).all():
        text = [_NON_FINITE.get(x, x) for x in text]
    return pa.array(text, pa.string()).take(bits.indices)


def _fill(template: str, *values: pa.Array) -> pa.Array:
    """``template % row`` for every row of the ``values`` columns (JSON text), joined in Arrow.
    (The templates hold no ``%`` but their ``%s`` slots.)"""
    literals = template.split("%s")
    parts: list[Any] = [literals[0]]
    for value, literal in zip(values, literals[1:], strict=True):
        parts += [value, literal]
    return pc.binary_join_element_wise(*parts, "")


def batch_messages(rows: pa.RecordBatch) -> dict[str, Any]:
    """The wire messages of a batch of transitions (events rows with ``seq >= 0``) as columns, in order:
    what ``wire_messages`` and ``dumps`` give one by one, through the live server's templates."""
    col = rows.column
    events, event_codes = _texts(col("event"))
    created = pa.array(np.isin(event_codes, [i for i, e in enumerate(events) if e == "session_created"]))
    stopped = np.isin(event_codes, [i for i, e in enumerate(events) if e == "session_stopped"])
    session_id = pc.cast(col("session_id"), pa.string())
    sid, t, seq = _json_strings(col("session_id")), _json_numbers(col("t")), _json_numbers(col("seq"))
    update = _fill(UPDATE_TEMPLATE, sid, *(_json_strings(col(c)) for c in ("state", "stt", "llm", "tts")),
                   _json_numbers(col("buffer_size")), _json_numbers(col("audio_quality")), t, seq,
                   _json_numbers(col("turn_id")), *(_json_strings(col(c)) for c in ("event", "status", "error")))
    message = pc.if_else(created, _fill(CREATED_TEMPLATE, sid, t, seq), update)
    kind = pc.if_else(created, "session_created", "pipeline_state_update")
    ends = pa.array(stopped)
    seq_after = pc.add(col("seq").filter(ends).cast(pa.int64()), 1)
    ended = _fill(ENDED_TEMPLATE, sid.filter(ends), t.filter(ends), seq_after.cast(pa.string()),
                  _json_strings(col("error"), replace=lambda e: e or "stopped").filter(ends))
    # Each stopped transition's session_ended right after its update: rows move down by the ends before them.
    n, n_ended = rows.num_rows, len(ended)
    position = np.arange(n) + np.cumsum(stopped) - stopped
    order = np.empty(n + n_ended, dtype=np.int64)
    order[position] = np.arange(n)
    order[position[stopped] + 1] = n + np.arange(n_ended)
    return {"t": pa.concat_arrays([col("t"), col("t").filter(ends)]).take(order),
            "session_id": pa.concat_arrays([session_id, session_id.filter(ends)]).take(order),
            "seq": pa.concat_arrays([col("seq").cast(pa.int64()), seq_after]).take(order),
            "type": pa.concat_arrays([kind, pa.array(["session_ended"] * n_ended, pa.string())]).take(order),
            "message": pa.concat_arrays([message, ended]).take(order)}
