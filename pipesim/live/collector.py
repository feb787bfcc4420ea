"""Python's garbage collector in a process that serves: no pause but a rare, scheduled one.

CPython's full collection walks every tracked object, and a server with 1,000 live sessions holds about
300,000 of them (random streams, samplers, connections, tasks): a pause of 0.1 to 0.3 s, during which no
client gets a message. It was ``pipesim serve``'s p99 delivery latency at 1,000 sessions (250 ms with the
collector as Python sets it, 15 to 20 ms with no collection at all). Python starts a full collection
whenever the objects that survived young collections grew by a quarter, which is most often while sessions
are arriving, exactly when a load test measures.

:class:`ServingCollector` keeps young collections as they are and takes the full ones over:

* at :meth:`~ServingCollector.start`, everything that exists (modules, the scenario, the model) is collected
  once and frozen (``gc.freeze``) for the life of the process: no later collection walks it again (at
  start-up alone that walk is 80 to 100 ms);
* every ``tick_s`` (2 s) the collector looks at Python's heap (``sys.getallocatedblocks``, a count: nothing
  is walked); every ``full_every_s`` (10 minutes), or at the tick where the heap has doubled (``growth``, as
  Go's collector does by default) since the last such collection, it collects everything made since
  start-up. That is the one long pause, and what bounds memory: a reference cycle that became garbage after
  it survived the young collections is freed then. pipesim leaves none per closed connection or
  forgotten session (``tests/test_live_memory.py``; it also breaks websockets' own cycle, a closed
  connection's protocol held by its parser generator with some 80 KB of permessage-deflate buffers outside
  Python's block count, which this trigger would never see); what is left is Python 3.11's closed socket
  transport (~0.6 KB). A server at a steady load has one every 10 minutes.

(``gc.get_freeze_count()`` walks the frozen objects, 15 to 60 ms at 1,000 sessions: nothing here calls it
on a schedule.) It is the process's collector, so only the process's owner starts it (``pipesim serve`` and
``pipesim replay`` do, and ``pipesim load``'s client processes); a server run inside a notebook or a test
leaves the host's collector alone. :meth:`~ServingCollector.stop` puts everything back.

>>> collector = ServingCollector(tick_s=10.0)
>>> collector.start(schedule=False)     # the schedule needs a running event loop; tick() by hand here
>>> collector.tick()
>>> collector.as_dict()["ticks"], collector.as_dict()["full_collections"]
(1, 0)
>>> collector.stop()
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

#: Automatic full collections, in effect never: Python's third threshold counts young collections.
_NEVER = 1 << 30


class ServingCollector:
    """Young collections as Python runs them, full ones when the heap doubled, start-up's objects frozen.

    ``tick_s``: seconds between looks at the heap; ``full_every_s``: at most this long between collections of
    everything; ``growth``: collect everything as soon as Python's heap (allocated blocks) is this many times
    what it was after the last such collection. ``clock`` and ``heap`` are for tests.
    """

    def __init__(self, tick_s: float = 2.0, full_every_s: float = 600.0, growth: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 heap: Callable[[], int] = sys.getallocatedblocks) -> None:
        if tick_s <= 0 or full_every_s <= 0 or growth <= 1:
            raise ValueError("tick_s and full_every_s must be positive and growth above 1")
        self.tick_s, self.full_every_s, self.growth, self.clock, self.heap = tick_s, full_every_s, growth, clock, heap
        self.ticks = 0
        self.full_collections = 0
        self.last_full_ms = 0.0
        self.max_full_ms = 0.0
        self.full_ms_total = 0.0
        self._threshold: tuple[int, int, int] | None = None
        self._heap_after_full = 0
        self._last_full = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._threshold is not None

    def start(self, schedule: bool = True) -> None:
        """Freeze what exists, stop Python's own full collections and (``schedule``) tick on the running loop."""
        if self.running:
            raise RuntimeError("the collector is already started")
        self._threshold = gc.get_threshold()
        gc.set_threshold(self._threshold[0], self._threshold[1], _NEVER)
        self._collect_everything()
        gc.freeze()  # start-up's objects (modules, the scenario, the model) for good: never walked again
        self.full_collections, self.last_full_ms, self.max_full_ms, self.full_ms_total = 0, 0.0, 0.0, 0.0
        if schedule:
            self._schedule()

    def stop(self) -> None:
        """Cancel the schedule, unfreeze and give Python its own thresholds back."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._threshold is not None:
            gc.unfreeze()
            gc.set_threshold(*self._threshold)
            self._threshold = None

    def tick(self) -> None:
        """Collect everything made since start-up when that is due (a look at the heap's size otherwise)."""
        if not self.running:
            raise RuntimeError("the collector is not started")
        self.ticks += 1
        if (self.heap() >= self.growth * self._heap_after_full
                or self.clock() - self._last_full >= self.full_every_s):
            self._collect_everything()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (``GET /stats`` shows them under ``gc``)."""
        return {"ticks": self.ticks, "full_collections": self.full_collections,
                "last_full_ms": round(self.last_full_ms, 3), "max_full_ms": round(self.max_full_ms, 3),
                "full_ms_total": round(self.full_ms_total, 3), "heap_blocks": self.heap(),
                "heap_blocks_after_full": self._heap_after_full}

    def _collect_everything(self) -> None:
        t0 = time.perf_counter()
        gc.collect()  # young collections never walk the old generation: only this does, and not what is frozen
        self.last_full_ms = (time.perf_counter() - t0) * 1000
        self.max_full_ms = max(self.max_full_ms, self.last_full_ms)
        self.full_ms_total += self.last_full_ms
        self.full_collections += 1
        self._heap_after_full = self.heap()
        self._last_full = self.clock()

    def _schedule(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._scheduled_tick)

    def _scheduled_tick(self) -> None:
        self.tick()
        self._schedule()
