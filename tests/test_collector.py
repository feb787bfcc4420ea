"""The serving process's garbage collector (pipesim.live.collector): short pauses, nothing kept for ever."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from conftest import run

from pipesim.live.collector import ServingCollector


class _Node:
    """An object in a reference cycle: only a collection (not reference counting) frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector():
    clock, heap = [0.0], [1_000_000]
    c = ServingCollector(tick_s=10.0, full_every_s=600.0, growth=1.25, clock=lambda: clock[0], heap=lambda: heap[0])
    c.clock_value, c.heap_value = clock, heap  # the test moves them by hand
    yield c
    c.stop()
    assert gc.get_freeze_count() == 0  # the test process's collector is as it was


def test_start_freezes_what_exists_and_stops_python_s_own_full_collections(collector):
    before = gc.get_threshold()
    collector.start(schedule=False)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 1_000_000
    collector.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_tick_walks_nothing_until_a_collection_is_due(collector):
    collector.start(schedule=False)
    node = _Node()
    alive = weakref.ref(node)
    gc.collect(1)  # survives the young collections: in the old generation now, which only a full one walks
    del node
    gc.collect(1)
    collector.tick()
    assert alive() is not None and collector.full_collections == 0 and collector.ticks == 1


def test_a_cycle_that_outlived_the_young_collections_is_freed_by_the_next_full_one(collector):
    collector.start(schedule=False)
    node = _Node()
    alive = weakref.ref(node)
    gc.collect(1)
    del node
    collector.tick()
    assert alive() is not None and collector.full_collections == 0
    collector.clock_value[0] = 600.0  # full_every_s later
    collector.tick()
    assert alive() is None and collector.full_collections == 1


def test_a_full_collection_leaves_start_up_s_objects_frozen(collector):
    # What existed at start-up (modules, the scenario, the model) is never walked again: 80 to 100 ms of each
    # full collection of a server, before it was kept frozen through them.
    collector.start(schedule=False)
    frozen = gc.get_freeze_count()
    collector.clock_value[0] = 600.0
    collector.tick()
    assert collector.full_collections == 1 and gc.get_freeze_count() == frozen


def test_heap_growth_brings_the_collection_of_everything_forward(collector):
    collector.start(schedule=False)
    collector.heap_value[0] = 1_200_000
    collector.tick()
    assert collector.full_collections == 0
    collector.heap_value[0] = 1_250_000  # a quarter more than after the last collection of everything
    collector.tick()
    assert collector.full_collections == 1
    collector.tick()  # measured from there again
    assert collector.full_collections == 1
    assert collector.as_dict()["heap_blocks_after_full"] == 1_250_000


def test_the_schedule_ticks_on_the_running_loop_and_stops():
    async def main() -> ServingCollector:
        c = ServingCollector(tick_s=0.01)
        c.start()
        try:
            await asyncio.sleep(0.1)
        finally:
            c.stop()
        ticks = c.ticks
        await asyncio.sleep(0.05)
        assert c.ticks == ticks  # nothing after stop
        return c

    c = run(main())
    assert c.ticks >= 3
    assert gc.get_freeze_count() == 0


def test_bad_settings_and_misuse_are_refused():
    with pytest.raises(ValueError, match="growth"):
        ServingCollector(growth=1.0)
    with pytest.raises(ValueError, match="positive"):
        ServingCollector(tick_s=0)
    c = ServingCollector()
    with pytest.raises(RuntimeError, match="not started"):
        c.tick()
    c.start(schedule=False)
    try:
        with pytest.raises(RuntimeError, match="already started"):
            c.start(schedule=False)
    finally:
        c.stop()
