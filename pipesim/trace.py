"""The trace: the one record of a run, shared by the model, the analysis, replay and the server.

Four tables, kept in columns (typed arrays, strings as small-integer codes against a dictionary), each
appended to with one call by the model; DataFrames are built once, at the end:

* ``events``: every state-manager transition (``seq >= 0``) and every model event (``seq == -1``),
  in the order they happened, with the session's full state after transitions. A turn's ``turn_id`` is
  assigned at the end of its utterance, so ``speech_started`` and ``audio`` transitions still carry the
  previous turn's id; the model's ``speech_ended`` event carries the id the turn will have.
* ``turns``: one row per user turn, written by the model when the turn ends (and patched while stale work
  of the turn still finishes).
* ``services``: busy workers and queue length of a service after every change.
* ``kafka_windows``: every Kafka stall or outage in force during the run.

Events and service samples are appended as rows to a short list and turned into Arrow columns every
``chunk_rows`` rows, so a run holds ~50-80 bytes per event instead of a Python tuple's ~400. With ``sink``
(a folder) those chunks are written to Parquet as the run goes (``events.parquet``, ``services.parquet``)
and memory stays bounded whatever the run's length (once closed, the turns are read from ``turns.parquet``
too); DataFrames are built one Arrow column at a time. With ``limit`` only the most recent events, samples
(and a sixteenth as many turns) are kept (a ring for the live server: :attr:`Trace.dropped` counts what it forgot).

A trace saves to Parquet (:meth:`Trace.to_parquet`, lossless) or JSON Lines (one object per line,
``record`` says which table) and loads back from either.

>>> t = Trace()
>>> t.model_event(1.0, "s1", 1, "speech_ended", value=2.0)
>>> t.events_frame()[["t", "event", "value"]].astype({"event": str}).to_dict("records")
[{'t': 1.0, 'event': 'speech_ended', 'value': 2.0}]
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipesim import _jsonsafe
from pipesim.errors import TraceError
from pipesim.protocol import CREATED_TEMPLATE, ENDED_TEMPLATE, UPDATE_TEMPLATE, json_string, wire_messages
from pipesim.state import Transition

EVENT_COLUMNS = ("t", "session_id", "turn_id", "seq", "event", "service", "status", "state", "stt", "llm",
                 "tts", "buffer_size", "audio_quality", "error", "value")

#: Columns of the ``turns`` table. Times ending in nothing are seconds; absolute times are seconds since
#: the start of the run. For every turn that reached the bot's first audio::
#:
#:     e2e_latency = end_of_utterance_delay + stt_stage + llm_stage + tts_stage
#:     <x>_stage   = <x>_kafka + <x>_queue + <x>_service + <x>_retry
#:
#: ``llm_stage`` ends when the first phrase reaches TTS; what the LLM generated after that overlapped
#: with TTS (``streaming_overlap``). ``ttft`` and ``ttfb`` are measured from each service's request
#: (``ttfb`` is ``tts_stage`` under the name LiveKit and Pipecat use); ``transcription_delay`` from the end of
#: speech to the final transcript (``end_of_utterance_delay + stt_stage``).
#: ``<x>_queue`` is the time every attempt of the turn waited for a worker; ``<x>_retry`` the rest of the
#: time lost to attempts that timed out. ``<x>_busy`` is the worker time the turn's requests held (the LLM's
#: whole generation; stale attempts served after a timeout included), so that summed over the turns it is
#: the busy time of the pool.
TURN_COLUMNS = (
    "session_id", "turn_id", "outcome", "error",
    "speech_start", "speech_end", "utterance_ended", "first_audio", "turn_end",
    "utterance_duration", "audio_quality", "audio_bytes", "end_of_utterance_delay",
    "stt_kafka", "stt_queue", "stt_service", "stt_retry", "stt_timeouts", "stt_stage", "stt_busy",
    "transcription_delay",
    "llm_kafka", "llm_queue", "llm_service", "llm_retry", "llm_timeouts", "llm_stage", "llm_busy",
    "ttft", "llm_tokens", "llm_duration", "streaming_overlap",
    "tts_kafka", "tts_queue", "tts_service", "tts_retry", "tts_timeouts", "tts_stage", "tts_busy",
    "ttfb", "tts_audio_duration", "e2e_latency",
)
#: Columns of ``Results.messages``: ``message`` is the JSON text sent, ``t`` the time of its transition.
MESSAGE_SCHEMA = pa.schema([("t", pa.float64()), ("session_id", pa.string()), ("seq", pa.int64()),
                            ("type", pa.string()), ("message", pa.string())])
MESSAGE_COLUMNS = tuple(MESSAGE_SCHEMA.names)
SERVICE_COLUMNS = ("t", "service", "busy", "queued", "capacity")
KAFKA_WINDOW_COLUMNS = ("start", "end", "topic", "cause")
_NAN = math.nan
_TEXT_COLUMNS = frozenset({"session_id", "event", "service", "status", "state", "stt", "llm", "tts", "error",
                           "outcome"})
_CODE = pa.dictionary(pa.int32(), pa.string())
_SMALL_CODE = pa.dictionary(pa.int16(), pa.string())  # a column of few values: events, states, services, errors
#: Arrow types of the columnar tables: strings are codes into a per-chunk dictionary (categoricals in the
#: DataFrames); integers as narrow as their values allow (widened to int64 in the DataFrames).
EVENT_SCHEMA = pa.schema([("t", pa.float64()), ("session_id", _CODE), ("turn_id", pa.int32()), ("seq", pa.int32()),
                          *((c, _SMALL_CODE) for c in ("event", "service", "status", "state", "stt", "llm", "tts")),
                          ("buffer_size", pa.int64()), ("audio_quality", pa.float64()), ("error", _SMALL_CODE),
                          ("value", pa.float64())])
SERVICE_SCHEMA = pa.schema([("t", pa.float64()), ("service", _SMALL_CODE), ("busy", pa.int32()), ("queued", pa.int32()),
                            ("capacity", pa.int32())])
_TURN_TEXT = ("session_id", "outcome", "error")
_TURN_NUMBERS = tuple(c for c in TURN_COLUMNS if c not in _TURN_TEXT)
_TURN_INTS = ("turn_id", "stt_timeouts", "llm_timeouts", "tts_timeouts", "audio_bytes")
#: Rows of a table kept as Python tuples before they become Arrow columns, and rows per Parquet row group
#: when a trace streams to a folder. Small enough that the pending rows (~250 bytes each) stay in the CPU's
#: cache: 65,536 rows (~16 MB) made ten times as many last-level cache misses (1,670 against 177 a turn in
#: callgrind's simulation of an 8 MB cache), ~25% of a run's time on a shared machine, for the same instructions.
CHUNK_ROWS = 4_096
ROW_GROUP_ROWS = 1_048_576
#: Events per part when the wire messages are built (:meth:`Trace.message_tables`): each part has a fixed
#: set-up cost in Arrow, so parts are large; ~20 MB of JSON text each.
MESSAGE_BATCH_ROWS = 65_536
#: Messages per row group of ``messages.parquet``: ~80 MB of JSON text (a message is ~300 bytes, an event row
#: ~100), what saving a run holds of its messages at a time.
MESSAGE_GROUP_ROWS = 262_144
#: A trace with a limit of N events keeps N / this turns (a turn comes with ~30 events).
EVENTS_PER_TURN_KEPT = 16
#: Rows per chunk of a trace with a limit (the live server's): ~5 ms to turn into columns.
LIVE_CHUNK_ROWS = 4_096


class _Table:
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
            return pq.read_table(self.sink) if self.sink.exists() else self.schema.empty_table()
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
                yield from read_batches(self.sink, size, columns)
            return
        table = self.table()
        if columns is not None:
            table = table.select(columns)
        for start in range(0, table.num_rows, size):  # ``size`` rows each, not the chunks' CHUNK_ROWS
            yield from table.slice(start, size).combine_chunks().to_batches()


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

    >>> schema = pa.schema([("t", pa.float64()), ("event", _SMALL_CODE)])
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


class _Turns:
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
    def from_frame(cls, df: pd.DataFrame) -> _Turns:
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


class Trace:
    """The record of one run. The model appends; :meth:`events_frame` and friends read.

    ``sink``: a folder to stream events and service samples to as Parquet (a run too big to hold);
    ``limit``: keep only the most recent ``limit`` events and service samples, and ``limit / 16`` turns (the
    live server).
    """

    __slots__ = ("header", "_events", "_services", "_turns", "_windows", "sink", "on_transition",
                 "_model_observers", "_turns_file", "_turns_in_file", "__weakref__")

    def __init__(self, header: dict[str, Any] | None = None, sink: str | Path | None = None,
                 limit: int | None = None, chunk_rows: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.header: dict[str, Any] = dict(header or {})
        self.sink = None if sink is None else Path(sink)
        if self.sink is not None:
            if limit is not None:
                raise ValueError("a trace streams to a folder or keeps a limit, not both")
            self.sink.mkdir(parents=True, exist_ok=True)
        chunk_rows = chunk_rows or CHUNK_ROWS
        if limit is not None:  # the live server: small chunks, so that turning one into columns never holds
            # its event loop up for more than a few milliseconds; the ring holds at most limit + a chunk.
            chunk_rows = max(1, min(chunk_rows, limit // 4, LIVE_CHUNK_ROWS))
        self._events = _Table(EVENT_SCHEMA, chunk_rows, limit, None if self.sink is None
                              else self.sink / "events.parquet")
        self._services = _Table(SERVICE_SCHEMA, chunk_rows, limit, None if self.sink is None
                                else self.sink / "services.parquet")
        self._turns = _Turns(None if limit is None else max(1, limit // EVENTS_PER_TURN_KEPT))
        #: Once a streamed trace is closed (or one is loaded from a folder), its turns are read from this
        #: file when asked for, rather than held (~300 bytes a turn: 150 MB for 500,000 turns).
        self._turns_file: Path | None = None
        self._turns_in_file = 0
        self._windows: list[tuple[float, float, str, str]] = []
        self._model_observers: list[Callable[[tuple[Any, ...]], None]] = []
        if self.sink is not None:  # the files' header, in place before their first row group is written
            self._events.metadata = self._services.metadata = self._file_metadata()
        #: State-manager observer: record a transition (a Transition is an events row as it is). The list's
        #: own append, the cheapest call there is; the other appends flush it into columns (every utterance
        #: ends with a model event, so transitions alone never pile up for long).
        self.on_transition = self._events.pending.append

    # Appending (hot path) --------------------------------------------------------------------------
    def model_event(self, t: float, session_id: str, turn_id: int, event: str, service: str | None = None,
                    value: float = _NAN, detail: str | None = None) -> None:
        """Record something the model did that is not a state transition (e.g. ``first_audio``)."""
        row = (t, session_id, turn_id, -1, event, service, None, None, None, None, None, None, None, detail, value)
        self._events.append(row)
        if self._model_observers:  # only the live RTVI dialect subscribes
            for observer in self._model_observers:
                observer(row)

    def subscribe_model_events(self, observer: Callable[[tuple[Any, ...]], None]) -> Callable[[], None]:
        """Call ``observer(row)`` with every model event from now on (a row in :data:`EVENT_COLUMNS` order,
        ``seq`` -1); returns the function that unsubscribes it. The live RTVI dialect uses it for what
        the state manager does not see (first token, first audio).

        >>> t, seen = Trace(), []
        >>> stop = t.subscribe_model_events(seen.append)
        >>> t.model_event(1.0, "s1", 1, "first_audio", "tts", value=0.4); stop()
        >>> t.model_event(2.0, "s1", 1, "turn_ended")
        >>> [(row[0], row[4]) for row in seen]
        [(1.0, 'first_audio')]
        """
        self._model_observers.append(observer)
        return lambda: self._model_observers.remove(observer)

    def service_sample(self, t: float, service: str, busy: int, queued: int, capacity: int) -> None:
        """Record a service's busy workers and queue length after a change."""
        self._services.append((t, service, busy, queued, capacity))

    def add_turn(self, rec: Sequence[Any]) -> int:
        """Record a turn (its values in :data:`TURN_COLUMNS` order); returns its row, for :meth:`update_turn`."""
        return self._turns.add(rec)

    def update_turn(self, row: int, rec: Sequence[Any]) -> None:
        """Rewrite the turn at ``row`` (stale work of a turn that has ended still adds to its busy time)."""
        self._turns.set(row, rec)

    def kafka_window(self, start: float, end: float, topic: str, cause: str) -> None:
        """Record a Kafka stall or outage (``topic`` is a service or ``all``; ``cause`` says why)."""
        self._windows.append((start, end, topic, cause))
        if self._events.limit is not None and len(self._windows) > self._events.limit:
            del self._windows[0]

    # Sizes -----------------------------------------------------------------------------------------
    @property
    def limit(self) -> int | None:
        """How many of the most recent events the trace keeps (None: all of them)."""
        return self._events.limit

    @property
    def n_events(self) -> int:
        """Events recorded and kept (with ``sink``, written too)."""
        return len(self._events) + self._events.dropped

    def n_messages(self) -> int:
        """How many wire messages :meth:`messages_frame` would hold (a message per transition, and a
        ``session_ended`` after each stop), counted from two columns without building them.

        >>> t = Trace()
        >>> t.model_event(1.0, "s1", 1, "speech_ended"); t.n_messages()
        0
        """
        n = 0
        for batch in self._events.batches_of(ROW_GROUP_ROWS, ["seq", "event"]):
            transitions = batch.filter(pc.greater_equal(batch.column(0), 0))
            stops = pc.equal(pc.cast(transitions.column(1), pa.string()), "session_stopped")
            n += transitions.num_rows + (pc.sum(stops).as_py() or 0)
        return n

    @property
    def n_turns(self) -> int:
        """Turns recorded."""
        return self._turns.offset + self._turns.rows + self._turns_in_file

    @property
    def dropped(self) -> dict[str, int]:
        """Rows forgotten because of ``limit``: events, turns and service samples."""
        def forgotten(rows: int, kept: int, limit: int | None) -> int:
            return rows - min(kept, limit) if limit is not None else 0

        return {"events": forgotten(self.n_events, len(self._events), self._events.limit),
                "turns": forgotten(self.n_turns, self._turns.rows, self._turns.limit),
                "services": forgotten(len(self._services) + self._services.dropped, len(self._services),
                                      self._services.limit)}

    def nbytes(self) -> int:
        """Bytes the trace holds in memory (Arrow buffers, the turns block and pending rows; an estimate)."""
        pending = sum(len(t.pending) for t in (self._events, self._services)) * 400
        arrow = sum(b.nbytes for t in (self._events, self._services) for b in t.batches)
        return arrow + pending + self._turns.numbers.nbytes + len(self._turns.text) * 80

    # Frames ----------------------------------------------------------------------------------------
    def events_table(self) -> pa.Table:
        """Every event kept, as an Arrow table (string columns dictionary-encoded)."""
        return self._events.table()

    def events_frame(self) -> pd.DataFrame:
        """Every event, one row each, in order; string columns are categoricals."""
        return _frame(self._events.columns(), {"turn_id": "int64", "seq": "int64"})

    def lifecycle_frame(self) -> pd.DataFrame:
        """``t``, ``session_id`` and ``event`` of the ``session_created`` and ``session_stopped`` events, in
        order: what the ``sessions`` table needs of the events, read without building the events frame.

        >>> t = Trace()
        >>> t.model_event(1.0, "s1", 1, "speech_ended"); t.model_event(2.0, "s1", 1, "session_stopped")
        >>> t.lifecycle_frame().astype(str).values.tolist()
        [['2.0', 's1', 'session_stopped']]
        """
        names = ["t", "session_id", "event"]
        kept = [batch.filter(pc.is_in(pc.cast(batch.column("event"), pa.string()),
                                      pa.array(["session_created", "session_stopped"])))
                for batch in self._events.batches_of(ROW_GROUP_ROWS, names)]
        schema = pa.schema([self._events.schema.field(n) for n in names])
        # Cast: a file's codes may come back with other index widths than the schema's (pyarrow 15 reads
        # every dictionary column of a Parquet file with int32 indices).
        table = (pa.Table.from_batches(kept) if kept else schema.empty_table()).cast(schema)
        return _frame(((name, table.column(name)) for name in names), {})

    def end_time(self) -> float:
        """The time of the last event kept (0.0 without any), read without building the events frame.

        >>> t = Trace()
        >>> t.model_event(1.5, "s1", 1, "speech_ended"); t.model_event(0.5, "s2", 1, "speech_ended")
        >>> t.end_time()
        1.5
        """
        ends = [pc.max(batch.column(0)).as_py() for batch in self._events.batches_of(ROW_GROUP_ROWS, ["t"])]
        return float(max((e for e in ends if e is not None), default=0.0))

    def turns_frame(self) -> pd.DataFrame:
        """One row per turn (see :data:`TURN_COLUMNS`)."""
        if self._turns_file is not None:
            return _Turns.from_frame(pd.read_parquet(self._turns_file)).frame()
        return self._turns.frame()

    def services_frame(self) -> pd.DataFrame:
        """Busy workers and queue length of each service after every change (``service`` a categorical)."""
        return _frame(self._services.columns(), dict.fromkeys(("busy", "queued", "capacity"), "int64"))

    def kafka_windows_frame(self) -> pd.DataFrame:
        """Every Kafka stall or outage in force: start, end (s), topic (a service or ``all``), cause."""
        return pd.DataFrame(self._windows, columns=list(KAFKA_WINDOW_COLUMNS))

    def messages_frame(self) -> pd.DataFrame:
        """The wire messages a dashboard watching every session would have received, in order: ``message``
        is the JSON text, byte for byte what ``json.dumps`` writes of each of :func:`sent_messages`.
        Built column by column (a million messages in seconds), never one message at a time. All of them at
        once: :meth:`message_tables` gives them a part at a time.

        >>> from pipesim.state import Transition
        >>> t = Trace()
        >>> t.on_transition(Transition(0.5, "s1", 0, 0, "session_created", None, "created", "idle", "idle",
        ...                            "idle", "idle", 0, 0.0, None))
        >>> t.messages_frame()["message"].tolist()
        ['{"type":"session_created","session_id":"s1","timestamp":0.5,"seq":0}']
        """
        return pa.concat_tables([MESSAGE_SCHEMA.empty_table(), *self.message_tables()]).to_pandas()

    def message_tables(self, rows: int = MESSAGE_BATCH_ROWS) -> Iterator[pa.Table]:
        """The wire messages of :meth:`messages_frame`, in order, as Arrow tables of the messages of about
        ``rows`` events each (none empty): a run of any size, a part at a time.

        >>> t = Trace()
        >>> for i in range(3):
        ...     t.on_transition(Transition(float(i), f"s{i}", 0, 0, "session_created", None, "created", "idle",
        ...                                "idle", "idle", "idle", 0, 0.0, None))
        >>> [part.column("session_id").to_pylist() for part in t.message_tables(rows=2)]
        [['s0', 's1'], ['s2']]
        """
        for batch in self._events.batches_of(rows):
            part = _batch_messages(batch.filter(pc.greater_equal(batch.column("seq"), 0)))
            if len(part["t"]):
                yield pa.table(part, schema=MESSAGE_SCHEMA)

    # Files -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish a streamed trace: write the rows still held and the turns and Kafka windows.
        (Nothing to do without ``sink``.)"""
        if self.sink is None:
            return
        for table in (self._events, self._services):
            table.close()
        if self._turns_file is None:  # not closed yet: the turns are still held
            self._write_small(self.sink)
            self._spill_turns(self.sink / "turns.parquet", self.n_turns)
        pa.default_memory_pool().release_unused()  # the chunks' memory back to the system, for the DataFrames

    def _spill_turns(self, path: Path, rows: int) -> None:
        """Let go of the turns held: they are in ``path`` (``rows`` of them), read from there when asked."""
        self._turns, self._turns_file, self._turns_in_file = _Turns(None), path, rows

    def _file_metadata(self) -> dict[bytes, bytes]:
        return {b"pipesim": json.dumps(self.header, sort_keys=True).encode()}

    def _write_small(self, folder: Path) -> None:
        self.turns_frame().to_parquet(folder / "turns.parquet", index=False)
        self.kafka_windows_frame().to_parquet(folder / "kafka_windows.parquet", index=False)

    def to_parquet(self, folder: str | Path) -> list[Path]:
        """Write the four tables as Parquet into ``folder`` (``events``, ``turns``, ``services``,
        ``kafka_windows``; the header in ``events.parquet``'s metadata). :meth:`from_parquet` reads them back
        exactly. A streamed trace is already there; then only what is missing is written."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        names = [out / f"{n}.parquet" for n in ("events", "turns", "services", "kafka_windows")]
        for table, path in ((self._events, names[0]), (self._services, names[2])):
            if table.sink is not None and table.sink.resolve() == path.resolve():
                table.close()  # streamed there, or read from there: the file is this table already
                continue
            with pq.ParquetWriter(path, table.schema.with_metadata(self._file_metadata())) as writer:
                for batch in table.batches_of(ROW_GROUP_ROWS):
                    writer.write_batch(batch)
        self._write_small(out)
        return names

    @classmethod
    def from_parquet(cls, folder: str | Path) -> Trace:
        """Load a trace written by :meth:`to_parquet` (or streamed with ``sink``); the events and service
        samples stay in their files until a frame is asked for."""
        folder = Path(folder)
        events = folder / "events.parquet"
        try:
            meta = pq.read_schema(events).metadata or {}
            header = _jsonsafe.loads(meta.get(b"pipesim", b"{}"))
            trace = cls(header)
            windows = pd.read_parquet(folder / "kafka_windows.parquet")
            trace._events.sink, trace._services.sink = events, folder / "services.parquet"
            for table in (trace._events, trace._services):
                table.rows_in_batches = pq.read_metadata(table.sink).num_rows if table.sink.exists() else 0
            trace._spill_turns(folder / "turns.parquet", pq.read_metadata(folder / "turns.parquet").num_rows)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise TraceError(f"{folder}: not a pipesim run folder ({exc})") from None
        trace._windows = list(windows.itertuples(index=False, name=None))
        return trace

    def to_jsonl(self, path: str | Path) -> None:
        """Write the trace as JSON Lines: a header, then events, turns, service samples and Kafka windows.

        Byte for byte the same for the same run: fixed key order, no NaN (missing values are left out).
        """
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"record": "header", **self.header}, sort_keys=True) + "\n")
            turns = self.turns_frame().astype(object)
            for record, columns, batches in (
                    ("event", EVENT_COLUMNS, ([c.to_pylist() for c in b.columns] for b in self._events.batches_of())),
                    ("turn", TURN_COLUMNS, [[turns[c].tolist() for c in TURN_COLUMNS]]),
                    ("service", SERVICE_COLUMNS, ([c.to_pylist() for c in b.columns]
                                                  for b in self._services.batches_of())),
                    ("kafka_window", KAFKA_WINDOW_COLUMNS, [list(zip(*self._windows, strict=True))])):
                for batch in batches:
                    for row in zip(*batch, strict=True):
                        obj = {"record": record}
                        obj.update((k, _plain(v)) for k, v in zip(columns, row, strict=True)
                                   if v is not None and not (isinstance(v, float) and math.isnan(v)))
                        fh.write(json.dumps(obj, separators=(",", ":")) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Trace:
        """Load a trace written by :meth:`to_jsonl`; a bad line raises ``TraceError`` naming it.

        Every field is checked for its type (and a state transition for the fields it needs), so what
        loads can be analysed and replayed.
        """
        return _read_trace(path)[0]


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (numpy scalars from a frame become int or float)."""
    return value.item() if isinstance(value, np.generic) else value


def _frame(columns: Iterator[tuple[str, pa.ChunkedArray]], widen: dict[str, str]) -> pd.DataFrame:
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


def _batch_messages(rows: pa.RecordBatch) -> dict[str, Any]:
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
                          "tts_timeouts", "busy", "queued", "capacity"})
#: What a state transition (an event with ``seq >= 0``) needs to be replayed as a wire message.
TRANSITION_COLUMNS = ("t", "session_id", "turn_id", "event", "status", "state", "stt", "llm", "tts",
                      "buffer_size")


def _expected_type(column: str) -> tuple[type, ...]:
    # Exact types: a bool is not a number here, a float not an integer.
    return ((str,) if column in _TEXT_COLUMNS or column in ("topic", "cause")
            else (int,) if column in _INT_COLUMNS else (int, float))


_COLUMN_TYPES = {c: _expected_type(c) for c in (*EVENT_COLUMNS, *TURN_COLUMNS, *SERVICE_COLUMNS,
                                                *KAFKA_WINDOW_COLUMNS)}
_TYPE_NAMES = {(str,): "a string", (int,): "an integer", (int, float): "a number"}


def _read_trace(path: str | Path) -> tuple[Trace, list[int]]:
    """The trace, and the line of each of its events (so that replay can name a line)."""
    trace = Trace()
    event_lines: list[int] = []
    turns: list[tuple] = []
    tables = {"event": (EVENT_COLUMNS, trace._events.pending), "turn": (TURN_COLUMNS, turns),
              "service": (SERVICE_COLUMNS, trace._services.pending), "kafka_window": (KAFKA_WINDOW_COLUMNS,
                                                                                     trace._windows)}
    for number, obj in json_lines(path, not_json="not a pipesim trace record"):
        where = f"{path}:{number}"
        record = obj.pop("record", None) if isinstance(obj, dict) else None
        if not isinstance(record, str):
            raise TraceError(f"{where}: not a pipesim trace record (an object with a 'record' field)")
        if record == "header":
            trace.header = obj
            continue
        if record not in tables:
            raise TraceError(f"{where}: unknown record {record[:40]!r}")
        columns, rows = tables[record]
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
        rows.append(tuple(obj.get(c, -1 if c == "seq" else None if c in _TEXT_COLUMNS or c in _INT_COLUMNS else _NAN)
                          for c in columns))
        if record == "event":
            event_lines.append(number)
    if not event_lines and not turns:
        raise TraceError(f"{path}: no events in this trace")
    for rec in turns:
        trace.add_turn([0 if c in _TURN_INTS and v is None else v for c, v in zip(TURN_COLUMNS, rec, strict=True)])
    return trace, event_lines


def transition_from_row(row: Sequence[Any]) -> Transition:
    """Rebuild the state-manager transition of an ``events`` row (``seq >= 0``), e.g. one read from a file."""
    t, sid, turn_id, seq, event, service, status, state, stt, llm, tts, buf, quality, error, _ = row
    return Transition(float(t), sid, int(turn_id), int(seq), event, service, status, state, stt, llm, tts,
                      int(buf), float(quality), error)


def event_rows(trace: Trace, transitions_only: bool = False) -> Iterator[tuple]:
    """Every events row of a trace as a tuple in :data:`EVENT_COLUMNS` order, batch by batch (a streamed
    trace is read from its file, never whole)."""
    for batch in trace._events.batches_of():
        if transitions_only:
            batch = batch.filter(pc.greater_equal(batch.column("seq"), 0))
        yield from zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns)), strict=True)


def transitions(trace: Trace) -> list[Transition]:
    """Every state-manager transition of a trace, in order."""
    return [transition_from_row(row) for row in event_rows(trace, transitions_only=True)]


def sent_messages(trace: Trace) -> list[tuple[Transition, dict[str, Any]]]:
    """The wire messages a client watching every session would have received, each with the transition
    that produced it, in order (what replay serves and ``Results.messages`` tabulates)."""
    return [(tr, msg) for tr in transitions(trace) for msg in wire_messages(tr)]
