"""The clock of whatever serves the messages, one interface for the live pacer and a replay's playback.

The admin API drives either through :class:`Clock` without asking which it has: read it, pause, resume,
change the speed, and seek (a replay only: :attr:`Clock.seekable`).

>>> from pipesim.live.playback import Playback
>>> clock = PlaybackClock(Playback([(0.0, {"type": "session_created"})]), seek=lambda t: None)
>>> clock.pause(); clock.reading()["paused"]
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pipesim.live.pacer import Pacer
from pipesim.live.playback import Playback


class Clock(Protocol):
    """What the admin API does to a server's time."""

    #: Whether :meth:`seek` may be called (a live model only moves forward).
    seekable: bool

    def reading(self) -> dict[str, Any]:
        """``t`` (simulated seconds), ``paused``, ``speed``, ``next_event_t`` (None: nothing scheduled)."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def set_speed(self, speed: float) -> None:
        """``ValueError`` unless ``speed`` > 0."""
        ...

    def seek(self, t: float) -> None: ...


class PacerClock:
    """The live model's clock: ``pacer()`` gives the current pacer (a reset makes a new one)."""

    seekable = False

    def __init__(self, pacer: Callable[[], Pacer]) -> None:
        self._pacer = pacer

    def reading(self) -> dict[str, Any]:
        pacer = self._pacer()
        return {"t": pacer.now(), "paused": pacer.paused, "speed": pacer.speed, "next_event_t": pacer.next_event_t}

    def pause(self) -> None:
        self._pacer().pause()

    def resume(self) -> None:
        self._pacer().resume()

    def set_speed(self, speed: float) -> None:
        self._pacer().set_speed(speed)

    def seek(self, t: float) -> None:
        raise NotImplementedError("a live model moves forward only")


class PlaybackClock:
    """A replay's clock: its :class:`~pipesim.live.playback.Playback` cursor; ``seek`` brings the
    watchers to the state as of ``t``; ``moved`` is called after every move (the player looks again)."""

    seekable = True

    def __init__(self, playback: Playback, seek: Callable[[float], None],
                 moved: Callable[[], None] = lambda: None) -> None:
        self.playback = playback
        self._seek, self._moved = seek, moved

    def reading(self) -> dict[str, Any]:
        pb = self.playback
        return {"t": pb.position, "paused": pb.paused, "speed": pb.speed, "next_event_t": pb.next_t}

    def pause(self) -> None:
        self.playback.pause()
        self._moved()

    def resume(self) -> None:
        self.playback.resume()
        self._moved()

    def set_speed(self, speed: float) -> None:
        self.playback.set_speed(speed)
        self._moved()

    def seek(self, t: float) -> None:
        self._seek(t)
        self._moved()
