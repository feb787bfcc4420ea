"""Where the trace keeps its rows: append-only tables of Arrow record batches (in memory, a ring, or streamed
to Parquet), the turns block patched in place, and DataFrames built from Arrow one column at a time.

:class:`~pipesim.trace.Trace` reads :data:`CHUNK_ROWS` and :data:`ROW_GROUP_ROWS` from this module when it uses
them, so that one ``setattr`` here (a test's) changes them for every trace made after.

>>> from pipesim.trace.columns import SERVICE_SCHEMA
>>> table = ChunkedTable(SERVICE_SCHEMA, chunk_rows=2, limit=None, sink=None)
>>> for i in range(3):
...     table.append((float(i), "llm", i, 0, 4))
>>> len(table.batches), len(table.pending), table.table().num_rows
(1, 1, 3)
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipesim.errors import TraceError
from pipesim.trace.columns import TURN_COLUMNS

#: Rows of a table kept as Python tuples before they become Arrow columns, and rows per Parquet row group
#: when a trace streams to a folder. Small enough that the pending rows (~250 bytes each) stay in the CPU's
#: cache: 65,536 rows (~16 MB) made ten times as many last-level cache misses (1,670 against 177 a turn in
#: callgrind's simulation of an 8 MB cache), ~25% of a run's time on a shared machine, for the same instructions.
CHUNK_ROWS = 4_096
ROW_GROUP_ROWS = 1_048_576
_TURN_TEXT = ("session_id", "outcome", "error")
_TURN_NUMBERS = tuple(c for c in TURN_COLUMNS if c not in _TURN_TEXT)
_TURN_INTS = ("turn_id", "stt_timeouts", "llm_timeouts", "tts_timeouts", "audio_bytes")


class ChunkedTable:
    """An append-only table: rows as tuples in ``pending``, every ``chunk_rows`` rows converted to an Arrow
    record batch, kept in memory, dropped past ``limit`` (oldest chunk first) or written to ``sink``."""

    __slots__ = ("schema", "row_type", "pending", "batches", "chunk_rows", "limit", "rows_in_batches", "dropped",
                 "sink", "_writer", "_unwritten", "_unwritten_rows", "metadata")

    def __init__(self, schema: pa.Schema, chunk_rows: int, limit: int | None, sink: Path | None) -> None:
        self.schema, self.chunk_rows, self.limit, self.sink = schema, chunk_rows, limit, sink
        self.row_type = pa.struct(list(schema))  # a row as Arrow converts it: one field per column
        self.pending: list[tuple] = []
        self.batches: list[pa.RecordBatch] = []
        self.rows_in_batches = self.dropped = 0
        self._writer: pq.ParquetWriter | None = None
        self._unwritten: list[pa.RecordBatch] = []
        self._unwritten_rows = 0
        self.metadata: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return self.rows_in_batches + len(self.pending)

    def append(self, row: tuple) -> None:
        """Add a row (a chunk's worth of rows become a record batch)."""
        pending = self.pending
        pending.append(row)
        if len(pending) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Turn the pending rows into one record batch (and write it, when streaming)."""
        if not self.pending:
            return
        batch = _batch(self.pending, self.schema, self.row_type)
        self.pending.clear()  # in place: the state manager appends to this very list (Trace.on_transition)
        if self.sink is not None:
            self.rows_in_batches += batch.num_rows  # rows in the file count as kept: n_events counts them
            self._unwritten.append(batch)
            self._unwritten_rows += batch.num_rows
            if self._unwritten_rows >= ROW_GROUP_ROWS:
                self._write(final=False)
            return
        self.batches.append(batch)
        self.rows_in_batches += batch.num_rows
        while self.limit is not None and self.rows_in_batches - self.batches[0].num_rows >= self.limit:
            self.rows_in_batches -= self.batches[0].num_rows
            self.dropped += self.batches.pop(0).num_rows

    def _write(self, final: bool = True) -> None:
        """Write whole row groups of the unwritten rows (all of them if ``final``); keep the rest."""
        assert self.sink is not None
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.sink, self.schema.with_metadata(self.metadata))
        rest = write_row_groups(self._writer, pa.Table.from_batches(self._unwritten, schema=self.schema),
                                ROW_GROUP_ROWS, final)
        self._unwritten, self._unwritten_rows = rest.to_batches(), rest.num_rows

    def batch(self, rows: list[tuple]) -> pa.RecordBatch:
        """``rows`` (tuples in the schema's column order) as one record batch of this table's schema, not added
        to it (the requests still open where a run stopped)."""
        return _batch(rows, self.schema, self.row_type)

    def close(self) -> None:
        """Write what is left and close the file (when streaming; a table read from a file stays as it is)."""
        self.flush()
        if self.sink is not None and (self._writer is not None or self._unwritten or not self.sink.exists()):
            self._write()
            assert self._writer is not None
            self._writer.close()
            self._writer = None

    def table(self) -> pa.Table:
        """Every row kept (the most recent ``limit`` with a limit), as one Arrow table."""
        self.flush()
        if self.sink is not None:
            if self._writer is not None:
                self.close()
            return as_schema(pq.read_table(self.sink), self.schema) if self.sink.exists() else self.schema.empty_table()
        table = pa.Table.from_batches(self.batches, schema=self.schema)
        if self.limit is not None and table.num_rows > self.limit:
            table = table.slice(table.num_rows - self.limit)
        return table

    def columns(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, pa.ChunkedArray]]:
        """The kept rows' ``names`` columns (default: all) one at a time; a streamed table reads each from its
        file only when asked for it, so that a caller converting them holds one column of Arrow at a time."""
        names = self.schema.names if names is None else names
        self.flush()
        if self.sink is not None and self._writer is not None:
            self.close()
        if self.sink is not None and self.sink.exists():
            file = pq.ParquetFile(self.sink)
            for name in names:  # row group by row group: reading a column whole decodes it twice over
                yield name, pa.chunked_array([chunk for i in range(file.num_row_groups)
                                              for chunk in file.read_row_group(i, columns=[name]).column(0).chunks],
                                             type=file.schema_arrow.field(name).type)
            return
        table = self.table() if self.sink is None else self.schema.empty_table()
        for name in names:
            yield name, table.column(name)

    def batches_of(self, size: int = CHUNK_ROWS, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows in record batches of ``size`` rows (the last one shorter; only ``columns``, if given),
        without holding them all twice (read from the file when streaming)."""
        self.flush()
        if self.sink is not None:
            if self._writer is not None:
                self.close()
            if self.sink.exists():
                schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
                for batch in read_batches(self.sink, size, columns):
                    yield from as_schema(pa.Table.from_batches([batch]), schema).to_batches()
            return
        table = self.table()
        if columns is not None:
            table = table.select(columns)
        for start in range(0, table.num_rows, size):  # ``size`` rows each, not the chunks' CHUNK_ROWS
            yield from table.slice(start, size).combine_chunks().to_batches()


def as_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s types: a Parquet file's dictionary columns may come back with other index
    widths than were written (pyarrow 15 reads every one with int32 indices), and tables of two widths do not
    concatenate.

    >>> codes = pa.table({"x": pa.array(["a", "b"]).dictionary_encode()})  # int32 indices
    >>> as_schema(codes, pa.schema([("x", pa.dictionary(pa.int16(), pa.string()))])).schema.field("x").type
    DictionaryType(dictionary<values=string, indices=int16, ordered=0>)
    """
    return table if table.schema.equals(schema, check_metadata=False) else table.cast(schema)


def write_row_groups(writer: pq.ParquetWriter, table: pa.Table, group_rows: int, final: bool) -> pa.Table:
    """Write ``table``'s whole row groups of ``group_rows`` rows (all of it, the last group shorter, if
    ``final``); returns the rows left to write with the next ones."""
    whole = table.num_rows if final else table.num_rows - table.num_rows % group_rows
    if whole:
        writer.write_table(table.slice(0, whole), row_group_size=group_rows)
    return table.slice(whole)


def read_batches(path: Path, size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in record batches of ``size`` rows, holding one row group at a time.
    (``pre_buffer``, Arrow's default, keeps every row group read so far: the whole file by the end.)"""
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=size, columns=columns)


def _batch(rows: list[tuple], schema: pa.Schema, row_type: pa.StructType) -> pa.RecordBatch:
    """Rows (tuples in ``schema``'s column order) as one record batch: strings dictionary-encoded in the
    order they first appear, with the field's index type.

    The rows go to Arrow as they are, one struct per row, and come back as the struct's columns: Arrow
    reads each tuple once, in C++, instead of Python transposing them first (half the instructions).

    >>> schema = pa.schema([("t", pa.float64()), ("event", pa.dictionary(pa.int16(), pa.string()))])
    >>> batch = _batch([(0.5, "b"), (1.0, None), (2.0, "a"), (3.0, "b")], schema, pa.struct(list(schema)))
    >>> batch.column(1).dictionary.to_pylist(), batch.column(1).indices.to_pylist()
    (['b', 'a'], [0, None, 1, 0])
    """
    columns = pa.array(rows, type=row_type).flatten()
    for column, field in zip(columns, schema, strict=True):
        # Arrow widens a dictionary's indices when its values outgrow them: a column of too many values.
        if pa.types.is_dictionary(field.type):
            most = 2**(field.type.index_type.bit_width - 1) - 1
            if column.type != field.type or len(column.dictionary) > most:
                raise TraceError(f"{field.name}: more than {most:,} different values in {len(rows):,} events")
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class TurnTable:
    """The turns table in columns: numbers in one float64 block, grown by doubling, so that a row can be
    patched in place (stale work finishing after its turn); strings as Python strings (a few per turn)."""

    __slots__ = ("numbers", "text", "rows", "offset", "limit")

    def __init__(self, limit: int | None) -> None:
        self.numbers = np.empty((64, len(_TURN_NUMBERS)))
        self.text: list[tuple[str, str | None, str | None]] = []
        self.rows = 0  # rows kept (the ones from ``offset`` on)
        self.offset = 0  # row number of the first row kept (rows before it were forgotten, with a limit)
        self.limit = limit

    def add(self, rec: Sequence[Any]) -> int:
        if self.rows == len(self.numbers):
            if self.limit is not None and self.rows >= 2 * self.limit:  # forget the oldest half
                drop = self.rows - self.limit
                self.numbers[:self.limit] = self.numbers[drop:self.rows]
                del self.text[:drop]
                self.rows -= drop
                self.offset += drop
            else:
                self.numbers = np.concatenate([self.numbers, np.empty_like(self.numbers)])
        row = self.rows
        self.set(self.offset + row, rec)
        self.rows += 1
        return self.offset + row

    def set(self, row: int, rec: Sequence[Any]) -> None:
        i = row - self.offset
        if i < 0:
            return  # forgotten already (a live trace with a limit)
        self.numbers[i] = _turn_numbers(rec)
        text = (rec[0], rec[2], rec[3])
        if i == len(self.text):
            self.text.append(text)
        else:
            self.text[i] = text

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> TurnTable:
        """The rows of a turns frame (e.g. read from ``turns.parquet``): ``frame()`` gives it back."""
        turns = cls(None)
        turns.numbers = df[list(_TURN_NUMBERS)].to_numpy(dtype=np.float64)
        turns.rows = len(df)
        # A missing string reads back as NaN (pandas' str dtype) or None: None, as the model records it.
        text = [[v if isinstance(v, str) else None for v in df[name].tolist()] for name in _TURN_TEXT]
        turns.text = list(zip(*text, strict=True))
        return turns

    def frame(self) -> pd.DataFrame:
        start = max(0, self.rows - self.limit) if self.limit is not None else 0
        numbers = self.numbers[start:self.rows]
        text = list(zip(*self.text[start:self.rows], strict=True)) or [(), (), ()]
        # Strings as pandas infers them from Python strings and None (as from a list of rows).
        data: dict[str, Any] = {name: pd.Series(list(values), dtype=None if values else object)
                                for name, values in zip(_TURN_TEXT, text, strict=True)}
        for j, name in enumerate(_TURN_NUMBERS):
            data[name] = numbers[:, j]
        df = pd.DataFrame(data, columns=list(TURN_COLUMNS))
        ints = list(_TURN_INTS)
        tokens = df["llm_tokens"]
        if len(tokens) and not tokens.isna().any():  # as pandas infers it from Python ints: int64 if all are
            ints.append("llm_tokens")
        return df.astype(dict.fromkeys(ints, "int64"))


#: A turn record's numbers, in ``_TURN_NUMBERS`` order, as one C call (a comprehension costs ~1 us a turn more).
_turn_numbers = operator.itemgetter(*(TURN_COLUMNS.index(c) for c in _TURN_NUMBERS))


def to_frame(columns: Iterator[tuple[str, pa.ChunkedArray]], widen: dict[str, str]) -> pd.DataFrame:
    """A DataFrame of Arrow columns: codes become categoricals (categories sorted, so the same rows give
    the same frame whatever their chunks), narrow integers int64, nullable integers ``Int64``.

    Column by column, each Arrow column let go once converted: a frame of 15 million events is built
    holding the frame and one column, not the frame and a whole Arrow table (twice the memory).
    """
    data: dict[str, pd.Series] = {}
    for name, column in columns:
        if pa.types.is_dictionary(column.type):
            column = column.unify_dictionaries()
        series = column.to_pandas(types_mapper=_NULLABLE_INT.get)
        del column
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.cat.reorder_categories(sorted(series.cat.categories))
        data[name] = series.astype(widen[name]) if name in widen else series
    pa.default_memory_pool().release_unused()  # the columns read, back to the system for the next frame
    return pd.DataFrame(data, copy=False)


_NULLABLE_INT = {pa.int64(): pd.Int64Dtype()}
