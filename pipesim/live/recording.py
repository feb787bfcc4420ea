"""Recordings of what the live server sent, and loading anything that can be replayed.

A recording (``pipesim serve --record FILE``) is JSON Lines: a header line, then one line per message
broadcast to clients, in the order it was sent::

    {"recording":"pipesim","version":1,"scenario":"frontend_demo","seed":1,"speed":1.0}
    {"wall":0.000512,"t":0.0,"message":{"type":"session_created","session_id":"sim-00001",...}}

``wall`` is seconds since the server started, ``t`` the simulated time of the message. Every line is
flushed as it is written, so the file is complete and valid up to the last message even if the server
is killed. Messages sent to one client only (snapshots on connect, errors) are not recorded.

A reset of the model (``POST /__admin/reset``) starts a new segment, whose ``t`` starts again at 0::

    {"wall":12.5,"segment":2,"reason":"reset"}   (wall: that of the last message before it)

A replay plays the segments one after the other: a segment's times are shifted to start where the
previous one ended (its messages are sent as recorded).

:func:`load_replay` reads a recording, a trace (``trace.jsonl``) or a run folder (``pipesim run --out``'s
Parquet, or its ``trace.jsonl``) into the
``(t, message)`` pairs that :class:`~pipesim.live.ReplayServer` plays.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "rec.jsonl")
>>> rec = Recorder(path, {"scenario": "demo"})
>>> rec.write(0.5, 1.25, {"type": "session_created", "session_id": "a", "timestamp": 1.25, "seq": 0})
>>> rec.close()
>>> load_replay(path)
[(1.25, {'type': 'session_created', 'session_id': 'a', 'timestamp': 1.25, 'seq': 0})]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pipesim.model.budget import default_memory_limit
from pipesim.protocol import ProtocolError, dumps, parse_message, wire_messages
from pipesim.trace import (
    EVENT_COLUMNS,
    TRANSITION_COLUMNS,
    Trace,
    TraceError,
    event_rows,
    json_lines,
    read_jsonl,
    transition_from_row,
)
from pipesim.vocabulary import SERVER_MESSAGE_TYPES

RECORDING_VERSION = 1
_T = TypeVar("_T")
#: Memory a replayed message takes (its decoded dict and its ``(t, message)`` pair): ~970 bytes measured.
REPLAY_BYTES_PER_MESSAGE = 1_000
#: Memory per byte of a recording or trace file replayed (a ~300-byte line becomes a ~1,000-byte message).
REPLAY_BYTES_PER_FILE_BYTE = 3.5


class ReplayError(TraceError):
    """A file cannot be replayed; the message names the file (and line)."""


class Recorder:
    """Appends broadcast messages to a JSON Lines file, one flushed line per message.

    ``header`` (scenario, seed, speed, ...) goes on the first line. Missing parent folders are created
    (as ``pipesim run --out`` does). Raises ``OSError`` if the file cannot be written.
    """

    def __init__(self, path: str | Path, header: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line buffering: every line reaches the OS as it is written, so SIGKILL loses at most one line.
        self._fh: IO[str] | None = open(self.path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.count = 0
        #: Segments so far (a reset starts a new one).
        self.segments = 1
        self._wall = 0.0
        head = {"recording": "pipesim", "version": RECORDING_VERSION, **(header or {})}
        self._fh.write(json.dumps(head, separators=(",", ":")) + "\n")

    def write(self, wall: float, t: float, message: dict[str, Any] | str) -> None:
        """Record one message (a dict, or its wire text as :func:`pipesim.protocol.dumps` made it)."""
        if self._fh is None:
            return
        text = message if isinstance(message, str) else dumps(message)
        # The message is already serialised for the wire: splice it in rather than encoding it twice.
        self._wall = round(wall, 6)
        self._fh.write(f'{{"wall":{self._wall!r},"t":{t!r},"message":{text}}}\n')
        self.count += 1

    def new_segment(self, reason: str) -> None:
        """Start a new segment: the model's clock starts again at 0 (a reset). Its line's ``wall`` is that of
        the last message before it."""
        if self._fh is None:
            return
        self.segments += 1
        self._fh.write(json.dumps({"wall": self._wall, "segment": self.segments, "reason": reason},
                                  separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None


#: ``progress(fraction)`` of :func:`load_replay`: the share of the file read so far (0..1), None while the
#: share is unknown (a trace file is being parsed).
Progress = Callable[[float | None], None]
#: Rows (lines, events) between two calls of a ``progress`` callback.
PROGRESS_EVERY = 1024


def load_replay(path: str | Path, progress: Progress | None = None) -> list[tuple[float, dict[str, Any]]]:
    """The ``(t, message)`` pairs of a recording or a trace, in the order they were sent.

    ``path`` is a recording (``pipesim serve --record``), a trace (``trace.jsonl`` from
    ``pipesim run --out --jsonl`` or :meth:`pipesim.Trace.to_jsonl`), or a run folder (its
    ``events.parquet``, else its ``trace.jsonl``). Raises :class:`ReplayError` (a
    :class:`~pipesim.trace.TraceError`) naming the file and line (or event) of the problem.
    ``progress`` (see :data:`Progress`) is told how far the loading is, now and then.
    """
    report: Progress = progress or (lambda fraction: None)
    p = Path(path)
    if p.is_dir():
        if (p / "events.parquet").exists():
            try:
                trace = Trace.from_parquet(p)
            except TraceError as exc:
                raise ReplayError(str(exc)) from None
            n = trace.n_messages()
            _refuse_if_too_large(p, n * REPLAY_BYTES_PER_MESSAGE, f"its {n:,} messages")
            where = f"{p / 'events.parquet'}: event"
            rows = ((row, f"{where} {i}") for i, row in enumerate(event_rows(trace), 1))
            return _trace_messages(p, _reporting(rows, trace.n_events, report))
        if not (p / "trace.jsonl").exists():
            raise ReplayError(f"{p}: a folder without events.parquet or trace.jsonl (give a recording or a "
                              f"trace file)")
        p = p / "trace.jsonl"
    if p.is_file():
        size = p.stat().st_size
        _refuse_if_too_large(p, size * REPLAY_BYTES_PER_FILE_BYTE, f"the messages of {size / 1e6:,.0f} MB of JSON")
    lines = json_lines(p, not_json="not JSON, expected a pipesim recording or trace")
    first = next(lines, None)
    lines.close()
    if first is None:
        raise ReplayError(f"{p}: the file is empty")
    number, obj = first
    if isinstance(obj, dict) and "record" in obj:
        return _load_trace(p, report)
    if isinstance(obj, dict) and ("recording" in obj or "message" in obj):
        return _load_recording(p, report)
    raise ReplayError(f"{p}:{number}: neither a pipesim recording nor a trace line")


def _refuse_if_too_large(path: Path, need: float, what: str) -> None:
    """A replay holds every message, decoded: refuse one that would not fit in the memory available."""
    limit = default_memory_limit()
    if need > limit:
        raise ReplayError(f"{path}: replaying it would hold {what} in memory, about {need / 1e6:,.0f} MB, more "
                          f"than the {limit / 1e6:,.0f} MB available; replay a shorter run (pipesim run --until "
                          f"SECONDS, or fewer sessions)")


def _refuse_non_finite(value: Any, where: str, field: str = "") -> None:
    """A NaN or an infinity anywhere in a recorded line (Python's JSON reader takes them) names its field:
    no server may send one (the wire is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ReplayError(f"{where}: {field or 'the line'} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, where, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_non_finite(item, where, f"{field}[{i}]")


def _server_message(message: dict[str, Any], where: str) -> None:
    try:
        text = json.dumps(message, allow_nan=False)
    except ValueError:  # NaN or an infinity somewhere: the wire cannot carry it
        _refuse_non_finite(message, where, "message")
        raise
    try:
        # Validate against the protocol: a replay must never send what the server would not.
        parse_message(text, allowed=SERVER_MESSAGE_TYPES)
    except ProtocolError as exc:
        raise ReplayError(f"{where}: {exc}") from None


def _reporting(rows: Iterable[_T], total: int, report: Progress) -> Iterator[_T]:
    """``rows``, telling ``report`` the share of the ``total`` passed every :data:`PROGRESS_EVERY` rows."""
    for i, row in enumerate(rows):
        if i % PROGRESS_EVERY == 0:
            report(i / max(total, 1))
        yield row
    report(1.0)


def _count_lines(path: Path) -> int:
    """Lines of a file, counted in binary blocks (a fraction of a second for a gigabyte)."""
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def _load_trace(path: Path, report: Progress) -> list[tuple[float, dict[str, Any]]]:
    report(None)  # the trace reader parses the whole file first (half the time), without telling how far it is
    trace, event_lines = read_jsonl(path)
    rows = ((row, f"{path}:{number}") for row, number in zip(event_rows(trace), event_lines, strict=True))
    return _trace_messages(path, _reporting(rows, len(event_lines), report))


def _trace_messages(path: Path, rows: Any) -> list[tuple[float, dict[str, Any]]]:
    """The messages of a trace's events, given as ``(row, where)`` pairs (``where`` names the row)."""
    out = []
    required = [EVENT_COLUMNS.index(c) for c in TRANSITION_COLUMNS]
    # Validating each of ~10^5 messages with pydantic would triple the load time. The reader has checked
    # every field's type; what else the protocol constrains takes few values, so one message per
    # combination of those is validated.
    validated: set[tuple[Any, ...]] = set()
    for row, where in rows:
        if row[3] < 0:  # a model event, not a transition: nothing was sent
            continue
        missing = [EVENT_COLUMNS[i] for i in required if row[i] is None]
        if missing:
            raise ReplayError(f"{where}: a state transition (seq >= 0) needs {', '.join(missing)}")
        tr = transition_from_row(row)
        if not math.isfinite(tr.audio_quality):  # the trace reader takes NaN there; the wire cannot carry it
            raise ReplayError(f"{where}: audio_quality must be a finite number, got {tr.audio_quality}")
        for message in wire_messages(tr):
            kind = (message["type"], tr.state, tr.status, tr.stt, tr.llm, tr.tts, tr.turn_id >= 0,
                    tr.buffer_size >= 0, 0 <= tr.audio_quality <= 1, tr.error is None)
            if kind not in validated:
                _server_message(message, where)
                validated.add(kind)
            out.append((tr.t, message))
    if not out:
        raise ReplayError(f"{path}: the trace has no state transitions to replay")
    return out


def _load_recording(path: Path, report: Progress) -> list[tuple[float, dict[str, Any]]]:
    out: list[tuple[float, dict[str, Any]]] = []
    offset = 0.0  # where the current segment starts on the replay's clock: its model time starts at 0
    for number, obj in _reporting(json_lines(path), _count_lines(path), report):
        where = f"{path}:{number}"
        if not isinstance(obj, dict):
            raise ReplayError(f"{where}: a recording line must be a JSON object")
        if "recording" in obj:
            _refuse_non_finite(obj, where)
            if number != 1 and out:
                raise ReplayError(f"{where}: a recording header in the middle of the file")
            continue
        if "segment" in obj:  # a reset: the model's time starts again
            _refuse_non_finite(obj, where)
            offset = out[-1][0] if out else 0.0
            continue
        t, message = obj.get("t"), obj.get("message")
        if isinstance(t, bool) or not isinstance(t, int | float) or not isinstance(message, dict):
            raise ReplayError(f"{where}: a recording line needs a number 't' and an object 'message'")
        _refuse_non_finite({"t": t, "wall": obj.get("wall")}, where)
        _server_message(message, where)
        if out and offset + t < out[-1][0]:
            raise ReplayError(f"{where}: time goes backwards ({t} after {out[-1][0] - offset})")
        out.append((offset + t, message))
    if not out:
        raise ReplayError(f"{path}: the recording holds no messages")
    return out
