"""The :class:`Trace`: the record of one run, appended to by the model, read as DataFrames, saved to Parquet or
JSON Lines and loaded back (see :mod:`pipesim.trace`).

>>> t = Trace()
>>> t.service_sample(0.5, "llm", 3, 0, 12)
>>> t.services_frame()[["busy", "capacity"]].values.tolist()
[[3, 12]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipesim import _jsonsafe
from pipesim.errors import TraceError
from pipesim.protocol import wire_messages
from pipesim.state import Transition
from pipesim.trace import storage  # its sizes are read as storage.X when used: one setattr there changes them
from pipesim.trace.columns import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    KAFKA_WINDOW_COLUMNS,
    MESSAGE_SCHEMA,
    REQUEST_COLUMNS,
    REQUEST_SCHEMA,
    SERVICE_COLUMNS,
    SERVICE_SCHEMA,
    TURN_COLUMNS,
)
from pipesim.trace.jsonl import trace_records, write_jsonl
from pipesim.trace.storage import ChunkedTable, TurnTable, to_frame
from pipesim.trace.wire import MESSAGE_BATCH_ROWS, batch_messages

_NAN = math.nan
#: A trace with a limit of N events keeps N / this turns (a turn comes with ~30 events).
EVENTS_PER_TURN_KEPT = 16
#: ... and the requests of about as many turns (a turn sends ~4: its three services, and retries).
REQUESTS_PER_TURN = 4
#: Rows per chunk of a trace with a limit (the live server's): ~5 ms to turn into columns.
LIVE_CHUNK_ROWS = 4_096


class Trace:
    """The record of one run. The model appends; :meth:`events_frame` and friends read.

    ``sink``: a folder to stream events and service samples to as Parquet (a run too big to hold);
    ``limit``: keep only the most recent ``limit`` events and service samples, ``limit / 16`` turns and
    ``limit / 4`` requests (the live server).
    """

    __slots__ = ("header", "_events", "_services", "_requests", "_open_requests", "_turns", "_windows", "sink",
                 "on_transition", "add_request", "_model_observers", "_turns_file", "_turns_in_file", "__weakref__")

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
        chunk_rows = chunk_rows or storage.CHUNK_ROWS
        if limit is not None:  # the live server: small chunks, so that turning one into columns never holds
            # its event loop up for more than a few milliseconds; the ring holds at most limit + a chunk.
            chunk_rows = max(1, min(chunk_rows, limit // 4, LIVE_CHUNK_ROWS))
        self._events = ChunkedTable(EVENT_SCHEMA, chunk_rows, limit, None if self.sink is None
                              else self.sink / "events.parquet")
        self._services = ChunkedTable(SERVICE_SCHEMA, chunk_rows, limit, None if self.sink is None
                                else self.sink / "services.parquet")
        self._requests = ChunkedTable(REQUEST_SCHEMA, chunk_rows,
                                None if limit is None else max(1, limit * REQUESTS_PER_TURN // EVENTS_PER_TURN_KEPT),
                                None if self.sink is None else self.sink / "requests.parquet")
        #: The requests still open where the run stopped (:meth:`set_open_requests`), after the others.
        self._open_requests: list[tuple] = []
        self._turns = TurnTable(None if limit is None else max(1, limit // EVENTS_PER_TURN_KEPT))
        #: Once a streamed trace is closed (or one is loaded from a folder), its turns are read from this
        #: file when asked for, rather than held (~300 bytes a turn: 150 MB for 500,000 turns).
        self._turns_file: Path | None = None
        self._turns_in_file = 0
        self._windows: list[tuple[float, float, str, str]] = []
        self._model_observers: list[Callable[[tuple[Any, ...]], None]] = []
        if self.sink is not None:  # the files' header, in place before their first row group is written
            self._events.metadata = self._services.metadata = self._requests.metadata = self._file_metadata()
        #: State-manager observer: record a transition (a Transition is an events row as it is). The list's
        #: own append, the cheapest call there is; the other appends flush it into columns (every utterance
        #: ends with a model event, so transitions alone never pile up for long).
        self.on_transition = self._events.pending.append
        #: Record a request that is over: a row in :data:`REQUEST_COLUMNS` order (a table's own append).
        self.add_request: Callable[[tuple], None] = self._requests.append

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

    def set_open_requests(self, rows: list[tuple]) -> None:
        """The requests not over where the run stopped (rows in :data:`REQUEST_COLUMNS` order), shown after the
        others; each call replaces the last (a run continued later has other ones). Closing a streamed trace
        writes them.

        >>> t = Trace()
        >>> t.add_request(("s1", 1, "stt", 1, 0.5, 0.5, 0.9, "served"))
        >>> t.set_open_requests([("s1", 2, "stt", 1, 3.0, math.nan, math.nan, "waiting")])
        >>> t.requests_frame()["outcome"].tolist()
        ['served', 'waiting']
        """
        self._open_requests = list(rows)

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
        for batch in self._events.batches_of(storage.ROW_GROUP_ROWS, ["seq", "event"]):
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
        tables = (self._events, self._services, self._requests)
        pending = sum(len(t.pending) for t in tables) * 400
        arrow = sum(b.nbytes for t in tables for b in t.batches)
        return arrow + pending + self._turns.numbers.nbytes + len(self._turns.text) * 80

    # Frames ----------------------------------------------------------------------------------------
    def events_table(self) -> pa.Table:
        """Every event kept, as an Arrow table (string columns dictionary-encoded)."""
        return self._events.table()

    def events_frame(self) -> pd.DataFrame:
        """Every event, one row each, in order; string columns are categoricals."""
        return to_frame(self._events.columns(), {"turn_id": "int64", "seq": "int64"})

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
                for batch in self._events.batches_of(storage.ROW_GROUP_ROWS, names)]
        table = pa.Table.from_batches(kept, schema=pa.schema([self._events.schema.field(n) for n in names]))
        return to_frame(((name, table.column(name)) for name in names), {})

    def end_time(self) -> float:
        """The time of the last event kept (0.0 without any), read without building the events frame.

        >>> t = Trace()
        >>> t.model_event(1.5, "s1", 1, "speech_ended"); t.model_event(0.5, "s2", 1, "speech_ended")
        >>> t.end_time()
        1.5
        """
        ends = [pc.max(batch.column(0)).as_py() for batch in self._events.batches_of(storage.ROW_GROUP_ROWS, ["t"])]
        return float(max((e for e in ends if e is not None), default=0.0))

    def turns_frame(self) -> pd.DataFrame:
        """One row per turn (see :data:`TURN_COLUMNS`)."""
        if self._turns_file is not None:
            return TurnTable.from_frame(pd.read_parquet(self._turns_file)).frame()
        return self._turns.frame()

    def services_frame(self) -> pd.DataFrame:
        """Busy workers and queue length of each service after every change (``service`` a categorical)."""
        return to_frame(self._services.columns(), dict.fromkeys(("busy", "queued", "capacity"), "int64"))

    def _request_batches(self, size: int = storage.CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
        """The requests table's rows in record batches, those still open at the end last."""
        yield from self._requests.batches_of(size)
        if self._open_requests:
            yield self._requests.batch(self._open_requests)

    def requests_frame(self) -> pd.DataFrame:
        """One row per request sent to a service (see :data:`REQUEST_COLUMNS`); ``service`` and ``outcome``
        are categoricals."""
        table = pa.Table.from_batches(list(self._request_batches(storage.ROW_GROUP_ROWS)), schema=REQUEST_SCHEMA)
        return to_frame(((name, table.column(name)) for name in REQUEST_COLUMNS),
                      {"turn_id": "int64", "attempt": "int64"})

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
            part = batch_messages(batch.filter(pc.greater_equal(batch.column("seq"), 0)))
            if len(part["t"]):
                yield pa.table(part, schema=MESSAGE_SCHEMA)

    # Files -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish a streamed trace: write the rows still held and the turns and Kafka windows.
        (Nothing to do without ``sink``.)"""
        if self.sink is None:
            return
        for row in self._open_requests:  # the run is over: they go to the file with the others
            self._requests.append(row)
        self._open_requests = []
        for table in (self._events, self._services, self._requests):
            table.close()
        if self._turns_file is None:  # not closed yet: the turns are still held
            self._write_small(self.sink)
            self._spill_turns(self.sink / "turns.parquet", self.n_turns)
        pa.default_memory_pool().release_unused()  # the chunks' memory back to the system, for the DataFrames

    def _spill_turns(self, path: Path, rows: int) -> None:
        """Let go of the turns held: they are in ``path`` (``rows`` of them), read from there when asked."""
        self._turns, self._turns_file, self._turns_in_file = TurnTable(None), path, rows

    def _file_metadata(self) -> dict[bytes, bytes]:
        return {b"pipesim": json.dumps(self.header, sort_keys=True).encode()}

    def _write_small(self, folder: Path) -> None:
        self.turns_frame().to_parquet(folder / "turns.parquet", index=False)
        self.kafka_windows_frame().to_parquet(folder / "kafka_windows.parquet", index=False)

    def to_parquet(self, folder: str | Path) -> list[Path]:
        """Write the five tables as Parquet into ``folder`` (``events``, ``turns``, ``services``,
        ``kafka_windows``, ``requests``; the header in ``events.parquet``'s metadata). :meth:`from_parquet` reads
        them back exactly. A streamed trace is already there; then only what is missing is written."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        names = [out / f"{n}.parquet" for n in ("events", "turns", "services", "kafka_windows", "requests")]
        for table, path, batches in ((self._events, names[0], self._events.batches_of),
                                     (self._services, names[2], self._services.batches_of),
                                     (self._requests, names[4], self._request_batches)):
            if table.sink is not None and table.sink.resolve() == path.resolve():
                table.close()  # streamed there, or read from there: the file is this table already
                continue
            with pq.ParquetWriter(path, table.schema.with_metadata(self._file_metadata())) as writer:
                for batch in batches(storage.ROW_GROUP_ROWS):
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
            trace._requests.sink = folder / "requests.parquet"  # a folder saved before requests were kept: none
            for table in (trace._events, trace._services, trace._requests):
                table.rows_in_batches = pq.read_metadata(table.sink).num_rows if table.sink.exists() else 0
            trace._spill_turns(folder / "turns.parquet", pq.read_metadata(folder / "turns.parquet").num_rows)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise TraceError(f"{folder}: not a pipesim run folder ({exc})") from None
        trace._windows = list(windows.itertuples(index=False, name=None))
        return trace

    def to_jsonl(self, path: str | Path) -> None:
        """Write the trace as JSON Lines: a header, then events, turns, service samples, requests and Kafka
        windows.

        Byte for byte the same for the same run: fixed key order, no NaN (missing values are left out).
        """
        turns = self.turns_frame().astype(object)
        write_jsonl(path, self.header, (
            ("event", EVENT_COLUMNS, ([c.to_pylist() for c in b.columns] for b in self._events.batches_of())),
            ("turn", TURN_COLUMNS, [[turns[c].tolist() for c in TURN_COLUMNS]]),
            ("service", SERVICE_COLUMNS, ([c.to_pylist() for c in b.columns] for b in self._services.batches_of())),
            ("request", REQUEST_COLUMNS, ([c.to_pylist() for c in b.columns] for b in self._request_batches())),
            ("kafka_window", KAFKA_WINDOW_COLUMNS, [list(zip(*self._windows, strict=True))])))

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Trace:
        """Load a trace written by :meth:`to_jsonl`; a bad line raises ``TraceError`` naming it.

        Every field is checked for its type (and a state transition for the fields it needs), so what
        loads can be analysed and replayed.
        """
        return read_jsonl(path)[0]



def read_jsonl(path: str | Path) -> tuple[Trace, list[int]]:
    """A trace written by :meth:`Trace.to_jsonl`, and the line of each of its events (so that replay can name
    a line); a bad line raises ``TraceError`` naming it (see :func:`pipesim.trace.jsonl.trace_records`)."""
    trace = Trace()
    event_lines: list[int] = []
    turns: list[tuple] = []
    tables = {"event": trace._events.pending, "turn": turns, "service": trace._services.pending,
              "request": trace._requests.pending, "kafka_window": trace._windows}
    for number, record, row in trace_records(path):
        if record == "header":
            trace.header = row
            continue
        tables[record].append(row)
        if record == "event":
            event_lines.append(number)
    if not event_lines and not turns:
        raise TraceError(f"{path}: no events in this trace")
    for rec in turns:
        trace.add_turn(rec)
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
