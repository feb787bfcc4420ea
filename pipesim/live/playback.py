"""A playback cursor over a recording's ``(t, message)`` pairs: position, pause, resume, speed and seek.

:class:`Playback` is the clock of :class:`~pipesim.live.ReplayServer` (and of the admin API's replay
endpoints): it maps a wall clock to the recording's simulated time, ``t = anchor_t + (wall - anchor_wall)
x speed``, says which messages are due and how long until the next one, and knows each session's state at
any point, which is what a seek sends. It does no I/O and has no event loop: the wall clock is a function
(``time.monotonic`` by default, the event loop's ``time`` in the server), so it is tested by hand.

>>> items = [(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0, "seq": 0}),
...          (2.0, {"type": "pipeline_state_update", "session_id": "a", "seq": 1, "state": "listening"}),
...          (4.0, {"type": "session_ended", "session_id": "a", "timestamp": 4.0, "seq": 2, "reason": "stopped"})]
>>> now = [100.0]
>>> play = Playback(items, speed=2.0, clock=lambda: now[0])
>>> [m["seq"] for _, m in play.due()]
[0]
>>> now[0] += 1.0                     # one wall second at 2x: simulated t = 2.0
>>> play.position, [m["seq"] for _, m in play.due()]
(2.0, [1])
>>> play.pause(); now[0] += 50; play.position
2.0
>>> play.seek(1.0)                    # back: "a" exists, with no update yet before t=1
>>> sorted(play.sessions_at())
['a']
>>> play.resume(); play.next_delay()   # the update at t=2 is 0.5 wall seconds away at 2x
0.5
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class SessionAt:
    """A session as it stands at some point of a recording: how it was announced, its last update."""

    created: dict[str, Any] | None
    #: Its last ``pipeline_state_update`` so far (None before the first).
    latest: dict[str, Any] | None
    #: The ``seq`` of the last message about it so far.
    seq: int | None


class Playback:
    """The cursor: ``items`` in time order, played at ``speed`` simulated seconds per wall second.

    It starts at the first message's ``t``, running. :meth:`due` hands out the messages whose time has
    come (advancing the cursor); :meth:`seek` moves the cursor so that the messages at ``t`` and after
    are the ones still to come.
    """

    def __init__(self, items: Iterable[tuple[float, dict[str, Any]]], speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.items = list(items)
        if not self.items:
            raise ValueError("nothing to play")
        self.times = [t for t, _ in self.items]
        self._check_speed(speed)
        self.speed = float(speed)
        self._clock = clock
        #: Index of the next message to hand out.
        self.index = 0
        self.paused = False
        self._anchor_t = self.times[0]
        self._anchor_wall = clock()

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        return self.times[-1]

    @property
    def position(self) -> float:
        """The simulated time now (held while paused; never past the last message once it is sent)."""
        if self.paused:
            return self._anchor_t
        now = self._anchor_t + (self._clock() - self._anchor_wall) * self.speed
        return min(now, self.end) if self.finished else now

    @property
    def finished(self) -> bool:
        """Every message has been handed out."""
        return self.index >= len(self.items)

    @property
    def next_t(self) -> float | None:
        """The time of the next message, None when finished."""
        return None if self.finished else self.times[self.index]

    def due(self, limit: int | None = None) -> list[tuple[float, dict[str, Any]]]:
        """The messages whose time has come (at most ``limit``), in order; the cursor moves past them."""
        if self.finished:
            return []
        stop = bisect.bisect_right(self.times, self.position, lo=self.index)
        if limit is not None:
            stop = min(stop, self.index + limit)
        out = self.items[self.index:stop]
        self.index = stop
        return out

    def next_delay(self) -> float | None:
        """Wall seconds until the next message is due (0 if it is); None when paused or finished."""
        if self.paused or self.finished:
            return None
        return max(0.0, (self.times[self.index] - self.position) / self.speed)

    def pause(self) -> None:
        """Hold the position (idempotent)."""
        if not self.paused:
            self._anchor_t, self.paused = self.position, True

    def resume(self) -> None:
        """Go on from the held position (idempotent)."""
        if self.paused:
            self._anchor_wall, self.paused = self._clock(), False

    def set_speed(self, speed: float) -> None:
        """Play at ``speed`` from the current position on."""
        self._check_speed(speed)
        self._reanchor(self.position)
        self.speed = float(speed)

    def seek(self, t: float) -> None:
        """Move to ``t`` (clamped to the recording's span): the messages at ``t`` and later are still to come.

        Raises ``ValueError`` for a ``t`` that is not a finite number."""
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"seek: t must be a finite number of seconds, got {t!r}")
        t = min(max(float(t), self.start), self.end)
        self.index = bisect.bisect_left(self.times, t)
        self._reanchor(t)

    def restart(self) -> None:
        """Back to the first message (``--loop``)."""
        self.index = 0
        self._reanchor(self.start)

    def sessions_at(self, index: int | None = None) -> dict[str, SessionAt]:
        """The sessions created and not ended before message ``index`` (default: the cursor), in order."""
        out: dict[str, SessionAt] = {}
        for _, message in self.items[:self.index if index is None else index]:
            sid, kind = message.get("session_id"), message.get("type")
            if sid is None:
                continue
            if kind == "session_ended":
                out.pop(sid, None)
                continue
            at = out.get(sid)
            if kind == "session_created" or at is None:
                at = out[sid] = SessionAt(message if kind == "session_created" else None, None, None)
            if kind == "pipeline_state_update":
                at.latest = message
            at.seq = message.get("seq", at.seq)
        return out

    def _reanchor(self, t: float) -> None:
        self._anchor_t, self._anchor_wall = t, self._clock()

    @staticmethod
    def _check_speed(speed: float) -> None:
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed < math.inf:
            raise ValueError(f"speed must be a number > 0, got {speed!r}")
