"""The replay server: a recording or a trace played over the live protocol (``pipesim replay``).

See "Replay" in :mod:`pipesim.live.server`, whose :class:`~pipesim.live.server.BaseServer` it builds on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipesim.live.clock import PlaybackClock
from pipesim.live.connection import Client
from pipesim.live.options import ServerOptions
from pipesim.live.playback import Playback
from pipesim.live.recording import load_replay
from pipesim.live.server import BaseServer
from pipesim.protocol import ConversationControl, FaultInjection


class ReplayServer(BaseServer):
    """Serves a recording or a trace over the live protocol, at its original timing divided by ``speed``.

    ``source`` is a file (see :func:`~pipesim.live.recording.load_replay`) or ``(t, message)`` pairs.
    Playback starts when the first client connects, from the first message (so nobody misses the
    beginning); ``loop=True`` starts again after the last one. Controls and model faults are answered with
    ``error`` ``unsupported`` (a replay cannot change); ``disconnect`` works as live. Where it listens
    and who may connect are the :class:`~pipesim.live.options.ServerOptions`, as ``options`` or keywords.

    >>> server = ReplayServer([(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0,
    ...                                 "seq": 0})], port=0)
    >>> server.messages
    1
    """

    kind = "replay"

    def __init__(self, source: str | Path | Iterable[tuple[float, dict[str, Any]]], *, speed: float = 1.0,
                 loop: bool = False, options: ServerOptions | None = None, **server_options: Any) -> None:
        super().__init__(options, **server_options)
        self.source = str(source) if isinstance(source, str | Path) else "<messages>"
        self._items = load_replay(source) if isinstance(source, str | Path) else list(source)
        if not self._items:
            raise ValueError("nothing to replay")
        #: The cursor: position, pause, speed, seek (the admin API's replay clock drives it).
        self.playback = Playback(self._items, speed)
        self.timekeeper = PlaybackClock(self.playback, seek=self._seek, moved=self._moved_clock)
        self.loop = loop
        #: Times the playback reached its end.
        self.plays = 0
        self._player: asyncio.Task[None] | None = None
        self._latest: dict[str, dict[str, Any]] = {}  # last update of each session not yet ended
        self._position = self._items[0][0]
        self._finished: asyncio.Event | None = None
        self._wake = asyncio.Event()  # the cursor moved (seek, resume, speed): look at the schedule again
        self._moved = False  # the clock was driven before the first client came: do not restart it then

    @property
    def messages(self) -> int:
        """How many messages one playback sends."""
        return len(self._items)

    @property
    def speed(self) -> float:
        return self.playback.speed

    @property
    def paused(self) -> bool:
        return self.playback.paused

    def clock(self) -> dict[str, Any]:
        """The replay's clock as the admin API shows it: ``t``, ``paused``, ``speed``, ``next_event_t``."""
        return self.timekeeper.reading()

    def pause(self) -> dict[str, Any]:
        """Hold the playback where it is; connected clients keep their connection and get nothing new."""
        self.timekeeper.pause()
        return self.clock()

    def resume(self) -> dict[str, Any]:
        """Go on from where the playback was held."""
        self.timekeeper.resume()
        return self.clock()

    def set_speed(self, speed: float) -> dict[str, Any]:
        """Play at ``speed`` (simulated seconds per wall second) from now on; ``ValueError`` unless > 0."""
        self.timekeeper.set_speed(speed)
        return self.clock()

    def seek(self, t: float) -> dict[str, Any]:
        """Jump to simulated time ``t`` (see :meth:`_seek`) and play on from there."""
        self.timekeeper.seek(t)
        return self.clock()

    def _seek(self, t: float) -> None:
        """Jump to simulated time ``t`` (clamped to the recording's span) and play on from there.

        Every watcher is brought to the state as of ``t``, as a client joining then would see it: a
        session that no longer exists at ``t`` gets ``session_ended`` (reason ``"replay seek"``); one that
        does gets a ``snapshot`` of its last update before ``t``, preceded by its ``session_created``
        when it is new to the client or the seek went back (seq 0 again: the client starts the session
        afresh, as after ``--loop``). Then the messages from ``t`` on follow. ``ValueError`` for a ``t``
        that is not a finite number.
        """
        pb = self.playback
        before = pb.sessions_at()
        backwards = t < pb.position
        pb.seek(t)
        now, t = pb.sessions_at(), pb.position
        self._position = t
        for sid, gone in before.items():
            if sid not in now:
                self.hub.session_ended(sid, t, (gone.seq or 0) + 1, "replay seek")
        self._latest.clear()
        for sid, at in now.items():
            if at.created is not None and (backwards or sid not in before):
                self.hub.publish(sid, at.created, t)
            if at.latest is not None:
                self._latest[sid] = at.latest
                self.hub.publish(sid, {**at.latest, "event": "snapshot", "timestamp": t, "seq": at.seq}, t)

    def _moved_clock(self) -> None:
        self._moved = True
        self._wake.set()

    async def wait_finished(self) -> None:
        """Wait until the (first) playback has sent its last message."""
        if self._finished is None:
            raise RuntimeError("the server is not started")
        await self._finished.wait()

    def _record_header(self) -> dict[str, Any]:
        return {"replay_of": self.source, "speed": self.speed}

    def _journal_t(self) -> float:
        return self.playback.position

    def _stats(self) -> dict[str, Any]:
        return {**super()._stats(), "clock": self.clock()}

    def _on_start(self) -> None:
        self._finished = asyncio.Event()

    async def _on_stop(self) -> None:
        if self._player is not None:
            self._player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._player

    def _on_connect(self, client: Client) -> None:
        if self._player is None:
            if not self._moved:
                self.playback.restart()  # from the first message, now: nobody misses the beginning
            self._player = asyncio.ensure_future(self._play())

    def _snapshot(self, client: Client) -> list[dict[str, Any]]:
        return [{**m, "event": "snapshot", "timestamp": self._position}
                for sid, m in self._latest.items() if client.wants(sid)]

    async def _play(self) -> None:
        pb = self.playback
        counted = False  # this pass's end is counted in plays
        while True:
            batch = pb.due(limit=100)
            for t, message in batch:
                self._position = t
                sid = message.get("session_id")
                if sid is not None and message["type"] == "pipeline_state_update":
                    self._latest[sid] = message
                elif sid is not None and message["type"] == "session_ended":
                    self._latest.pop(sid, None)
                self.hub.publish(sid, message, t)
            if len(batch) == 100:
                await asyncio.sleep(0)  # behind: let the writers run
                continue
            if not pb.finished:
                counted = False
            elif not counted:
                counted = True
                self.plays += 1
                assert self._finished is not None
                self._finished.set()
                if self.loop:
                    self._latest.clear()
                    pb.restart()
                    continue
            # Sleep until the next message is due, or until the clock is paused, resumed, sped or sought.
            delay = pb.next_delay()
            self._wake.clear()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _on_control(self, client: Client, msg: ConversationControl) -> None:
        self.hub.error(client, "unsupported",
                    f"{msg.action}: this server replays {self.source}; controls cannot change it",
                    msg.session_id)

    def _on_fault(self, client: Client, msg: FaultInjection) -> None:
        if msg.fault == "disconnect":
            known = {m[1].get("session_id") for m in self._items}
            self.disconnect_fault(client, msg, lambda sid: sid in known)
            return
        self.hub.error(client, "unsupported", f"{msg.fault}: this server replays {self.source}; "
                    "only the disconnect fault is available", msg.session_id)
