"""The trace: the one record of a run, shared by the model, the analysis, replay and the server.

Three append-only tables of plain tuples (cheap to append in the model's inner loop; DataFrames are
built once, at the end):

* ``events``: every state-manager transition (``seq >= 0``) and every model event (``seq == -1``),
  in the order they happened, with the session's full state after transitions. A turn's ``turn_id`` is
  assigned at the end of its utterance, so ``speech_started`` and ``audio`` transitions still carry the
  previous turn's id; the model's ``speech_ended`` event carries the id the turn will have.
* ``turns``: one row per user turn, written by the model when the turn ends.
* ``service_samples``: busy workers and queue length of a service after every change.

A trace saves to JSON Lines (one object per line, ``record`` says which table) and loads back.

>>> t = Trace()
>>> t.model_event(1.0, "s1", 1, "speech_ended", value=2.0)
>>> t.events_frame()[["t", "event", "value"]].to_dict("records")
[{'t': 1.0, 'event': 'speech_ended', 'value': 2.0}]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipesim import _jsonsafe
from pipesim.errors import TraceError
from pipesim.protocol import wire_messages
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
SERVICE_COLUMNS = ("t", "service", "busy", "queued", "capacity")
_NAN = math.nan
_TEXT_COLUMNS = frozenset({"session_id", "event", "service", "status", "state", "stt", "llm", "tts", "error",
                           "outcome"})


class Trace:
    """Append-only record of one run. The model appends; :meth:`events_frame` and friends read."""

    __slots__ = ("events", "turns", "service_samples", "header")

    def __init__(self, header: dict[str, Any] | None = None) -> None:
        self.events: list[tuple] = []
        self.turns: list[tuple] = []
        self.service_samples: list[tuple] = []
        self.header: dict[str, Any] = dict(header or {})

    # Appending (hot path) --------------------------------------------------------------------------
    def on_transition(self, tr: Transition) -> None:
        """State-manager observer: record a transition (a Transition is an events row as it is)."""
        self.events.append(tr)

    def model_event(self, t: float, session_id: str, turn_id: int, event: str, service: str | None = None,
                    value: float = _NAN, detail: str | None = None) -> None:
        """Record something the model did that is not a state transition (e.g. ``first_audio``)."""
        self.events.append((t, session_id, turn_id, -1, event, service, None, None, None, None, None,
                            None, None, detail, value))

    # Frames ----------------------------------------------------------------------------------------
    def events_frame(self) -> pd.DataFrame:
        """Every event, one row each, in order."""
        df = pd.DataFrame.from_records(self.events, columns=list(EVENT_COLUMNS))
        return df.astype({"turn_id": "int64", "seq": "int64", "buffer_size": "Int64"})

    def turns_frame(self) -> pd.DataFrame:
        """One row per turn (see :data:`TURN_COLUMNS`)."""
        df = pd.DataFrame.from_records(self.turns, columns=list(TURN_COLUMNS))
        return df.astype({"turn_id": "int64", "stt_timeouts": "int64", "llm_timeouts": "int64",
                          "tts_timeouts": "int64", "audio_bytes": "int64"})

    def services_frame(self) -> pd.DataFrame:
        """Busy workers and queue length of each service after every change."""
        return pd.DataFrame.from_records(self.service_samples, columns=list(SERVICE_COLUMNS))

    # Files -----------------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> None:
        """Write the trace as JSON Lines: a header, then events, turns and service samples.

        Byte for byte the same for the same run: fixed key order, no NaN (missing values are left out).
        """
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"record": "header", **self.header}, sort_keys=True) + "\n")
            for record, columns, rows in (("event", EVENT_COLUMNS, self.events),
                                          ("turn", TURN_COLUMNS, self.turns),
                                          ("service", SERVICE_COLUMNS, self.service_samples)):
                for row in rows:
                    obj = {"record": record}
                    obj.update((k, v) for k, v in zip(columns, row, strict=True)
                               if v is not None and not (isinstance(v, float) and math.isnan(v)))
                    fh.write(json.dumps(obj, separators=(",", ":")) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Trace:
        """Load a trace written by :meth:`to_jsonl`; a bad line raises ``TraceError`` naming it.

        Every field is checked for its type (and a state transition for the fields it needs), so what
        loads can be analysed and replayed.
        """
        return _read_trace(path)[0]


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
    return (str,) if column in _TEXT_COLUMNS else (int,) if column in _INT_COLUMNS else (int, float)


_COLUMN_TYPES = {c: _expected_type(c) for c in (*EVENT_COLUMNS, *TURN_COLUMNS, *SERVICE_COLUMNS)}
_TYPE_NAMES = {(str,): "a string", (int,): "an integer", (int, float): "a number"}


def _read_trace(path: str | Path) -> tuple[Trace, list[int]]:
    """The trace, and the line of each of its events (so that replay can name a line)."""
    trace = Trace()
    event_lines: list[int] = []
    tables = {"event": (EVENT_COLUMNS, trace.events), "turn": (TURN_COLUMNS, trace.turns),
              "service": (SERVICE_COLUMNS, trace.service_samples)}
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
        if not math.isfinite(obj.get("t", 0)):
            raise TraceError(f"{where}: t must be a finite number, got {obj['t']}")
        rows.append(tuple(obj.get(c, -1 if c == "seq" else None if c in _TEXT_COLUMNS else _NAN)
                          for c in columns))
        if record == "event":
            event_lines.append(number)
    if not trace.events and not trace.turns:
        raise TraceError(f"{path}: no events in this trace")
    return trace, event_lines


def transition_from_row(row: tuple) -> Transition:
    """Rebuild the state-manager transition of an ``events`` row (``seq >= 0``), e.g. one read from a file."""
    t, sid, turn_id, seq, event, service, status, state, stt, llm, tts, buf, quality, error, _ = row
    return Transition(float(t), sid, int(turn_id), int(seq), event, service, status, state, stt, llm, tts,
                      int(buf), float(quality), error)


def transitions(trace: Trace) -> list[Transition]:
    """Every state-manager transition of a trace, in order."""
    return [transition_from_row(row) for row in trace.events if row[3] is not None and row[3] >= 0]


def sent_messages(trace: Trace) -> list[tuple[Transition, dict[str, Any]]]:
    """The wire messages a client watching every session would have received, each with the transition
    that produced it, in order (what replay serves and ``Results.messages`` tabulates)."""
    return [(tr, msg) for tr in transitions(trace) for msg in wire_messages(tr)]
