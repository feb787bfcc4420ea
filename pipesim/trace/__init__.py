"""The trace: the one record of a run, shared by the model, the analysis, replay and the server.

Five tables, kept in columns (typed arrays, strings as small-integer codes against a dictionary), each
appended to with one call by the model; DataFrames are built once, at the end:

* ``events``: every state-manager transition (``seq >= 0``) and every model event (``seq == -1``),
  in the order they happened, with the session's full state after transitions. A turn's ``turn_id`` is
  assigned at the end of its utterance, so ``speech_started`` and ``audio`` transitions still carry the
  previous turn's id; the model's ``speech_ended`` event carries the id the turn will have.
* ``turns``: one row per user turn, written by the model when the turn ends (and patched while stale work
  of the turn still finishes).
* ``services``: busy workers and queue length of a service after every change.
* ``requests``: one row per request the orchestrator sent a service (every attempt), written when it is
  over (its worker freed, or it left the queue unserved); those still open when a run stops come last.
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

Where each part lives (everything below is importable from ``pipesim.trace`` as well):

* :mod:`pipesim.trace.columns`: the tables' columns and their Arrow types;
* :mod:`pipesim.trace.storage`: the chunked Arrow tables, the turns block, DataFrames built column by column,
  and the chunk and row-group sizes;
* :mod:`pipesim.trace.wire`: the wire messages of the transitions, rendered column by column in Arrow;
* :mod:`pipesim.trace.jsonl`: JSON Lines, written and read back with every field checked;
* :mod:`pipesim.trace.record`: the :class:`Trace`, its Parquet files, and the rows and transitions of its events.
"""

from pipesim.errors import TraceError
from pipesim.trace.columns import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    KAFKA_WINDOW_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_SCHEMA,
    REQUEST_COLUMNS,
    REQUEST_OUTCOMES,
    REQUEST_SCHEMA,
    SERVICE_COLUMNS,
    SERVICE_SCHEMA,
    TRANSITION_COLUMNS,
    TURN_COLUMNS,
)
from pipesim.trace.jsonl import json_lines
from pipesim.trace.record import (
    EVENTS_PER_TURN_KEPT,
    LIVE_CHUNK_ROWS,
    REQUESTS_PER_TURN,
    Trace,
    event_rows,
    read_jsonl,
    sent_messages,
    transition_from_row,
    transitions,
)
from pipesim.trace.storage import CHUNK_ROWS, ROW_GROUP_ROWS, read_batches, write_row_groups
from pipesim.trace.wire import MESSAGE_BATCH_ROWS, MESSAGE_GROUP_ROWS

__all__ = [
    "CHUNK_ROWS", "EVENTS_PER_TURN_KEPT", "EVENT_COLUMNS", "EVENT_SCHEMA", "KAFKA_WINDOW_COLUMNS", "LIVE_CHUNK_ROWS",
    "MESSAGE_BATCH_ROWS", "MESSAGE_COLUMNS", "MESSAGE_GROUP_ROWS", "MESSAGE_SCHEMA", "REQUESTS_PER_TURN",
    "REQUEST_COLUMNS", "REQUEST_OUTCOMES", "REQUEST_SCHEMA", "ROW_GROUP_ROWS", "SERVICE_COLUMNS", "SERVICE_SCHEMA",
    "TRANSITION_COLUMNS", "TURN_COLUMNS", "Trace", "TraceError", "event_rows", "json_lines", "read_batches",
    "read_jsonl", "sent_messages", "transition_from_row", "transitions", "write_row_groups",
]
