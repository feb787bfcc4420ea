"""The message journal of a live or replay server: what clients sent (and what came of it), what they got.

WireMock keeps a request journal so that a test can verify what its client sent; :class:`Journal` does
the same for the WebSocket protocol. Every inbound frame is recorded with its connection id, the time and
its result (``"applied"``, or the ``error`` the client was sent); every outbound message once (a broadcast
with ``connection`` None and its session id; an error with the connection it went to). It is bounded:
the oldest entries go first. The admin API serves it (``GET /__admin/journal``).

>>> journal = Journal(maxlen=2)
>>> entry = journal.inbound("c1", {"type": "conversation_control", "action": "pause", "session_id": "a"}, t=1.5)
>>> entry["result"] = "applied"
>>> _ = journal.outbound(None, {"type": "session_created", "session_id": "b", "timestamp": 2.0, "seq": 0}, t=2.0)
>>> [(e["direction"], e["session_id"], e["result"]) for e in journal.entries(type="conversation_control")]
[('in', 'a', 'applied')]
>>> _ = journal.outbound("c1", {"type": "error", "code": "bad_message", "message": "x"}, t=2.0)
>>> [e["id"] for e in journal.entries(since=2)]   # a cursor: the entries made after entry 2
[3]
>>> len(journal), journal.clear(), len(journal), journal.last_id
(2, 2, 0, 3)
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

#: Default number of entries kept (``--journal-size``).
DEFAULT_JOURNAL_SIZE = 10_000


class Journal:
    """The last ``maxlen`` inbound and outbound messages, oldest first (see the module docstring).

    Entries are plain dicts (cheap on the broadcast path); ``wall_time`` is formatted when read.
    """

    def __init__(self, maxlen: int = DEFAULT_JOURNAL_SIZE) -> None:
        if maxlen < 1:
            raise ValueError(f"the journal needs room for at least one entry, got {maxlen}")
        self.maxlen = maxlen
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._ids = itertools.count(1)
        #: The id of the newest entry ever made (0: none); ids survive :meth:`clear`.
        self.last_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def inbound(self, connection: str, message: dict[str, Any], t: float,
                session_id: str | None = None) -> dict[str, Any]:
        """Record a client's frame (about ``session_id``, else the message's own); returns the entry, whose
        ``result`` the caller sets once handled."""
        return self._add("in", connection, message, t, result=None, session_id=session_id)

    def outbound(self, connection: str | None, message: dict[str, Any], t: float) -> dict[str, Any]:
        """Record a message sent to one connection, or broadcast (``connection`` None)."""
        return self._add("out", connection, message, t, result=None)

    def outbound_text(self, session_id: str | None, text: str, t: float) -> None:
        """Record a broadcast already serialised (the live fast path): parsed only when read."""
        self.last_id = next(self._ids)
        self._entries.append({"id": self.last_id, "wall_time": time.time(), "t": t, "direction": "out",
                              "connection": None, "session_id": session_id, "type": None, "message": None,
                              "text": text, "result": None})

    def _add(self, direction: str, connection: str | None, message: dict[str, Any], t: float,
             result: Any, session_id: str | None = None) -> dict[str, Any]:
        session_id, type_name = session_id or message.get("session_id"), message.get("type")
        self.last_id = next(self._ids)
        entry = {"id": self.last_id, "wall_time": time.time(), "t": t, "direction": direction,
                 "connection": connection,
                 "session_id": session_id if isinstance(session_id, str) else None,
                 "type": type_name if isinstance(type_name, str) else None,
                 "message": message, "result": result}
        self._entries.append(entry)
        return entry

    def entries(self, *, session_id: str | None = None, type: str | None = None,  # noqa: A002 (the field's name)
                direction: str | None = None, since: int | None = None, limit: int | None = None,
                where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The entries that match every given filter, oldest first: ``since`` (an entry id) keeps those made
        after it, ``where(entry)`` those it accepts (a pattern: :func:`pipesim.live.stubs.matches`), ``limit``
        the newest ``limit`` of them. ``wall_time`` is an ISO 8601 string here."""
        for e in self._entries:
            if e["message"] is None:  # a broadcast kept as text: parse it once, now that it is read
                e["message"] = json.loads(e.pop("text"))
                e["type"] = e["message"].get("type")
        entries: Any = self._entries
        if since is not None:  # ids grow along the deque: skip the older ones from the left
            entries = itertools.dropwhile(lambda e: e["id"] <= since, entries)
        found = [e for e in entries
                 if (session_id is None or e["session_id"] == session_id)
                 and (type is None or e["type"] == type)
                 and (direction is None or e["direction"] == direction)
                 and (where is None or where(e))]
        if limit is not None:
            found = found[-limit:] if limit > 0 else []
        return [{**e, "wall_time": datetime.fromtimestamp(e["wall_time"], UTC).isoformat()} for e in found]

    def clear(self) -> int:
        """Forget every entry; returns how many there were."""
        n = len(self._entries)
        self._entries.clear()
        return n
