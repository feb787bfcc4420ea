"""The live server at scale and over time: stopped sessions are forgotten, the broadcast index holds only
connected clients, and ``/stats`` publishes the clock that maps simulated time to wall time."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import urllib.request
import weakref
from typing import Any

import pytest
from conftest import run

from pipesim.live import LiveClient, LiveServer
from pipesim.model import Simulation
from pipesim.scenario import Scenario
from pipesim.state import IllegalTransition

SCENARIO = Scenario.model_validate({"name": "memory-test", "seed": 3, "sessions": {
    "arrivals": {"kind": "at_once", "count": 0}, "turns": 1000, "barge_in_probability": 0.0}})


def about(session_id: str, **fields: Any) -> Any:
    return lambda m: m.get("session_id") == session_id and all(m.get(k) == v for k, v in fields.items())


def errors(client: LiveClient) -> Any:
    return client.expect(lambda m: m["type"] == "error")


def test_a_stopped_session_is_forgotten_after_the_grace_period_and_its_id_stays_refused() -> None:
    async def main() -> None:
        async with LiveServer(SCENARIO, port=0, speed=40, forget_after=2.0) as server, \
                LiveClient(server.url) as client:
            for sid in ("keep", "gone"):
                await client.control("start", sid)
                await client.expect(about(sid, event="session_started"))
            await client.control("stop", "gone")
            await client.expect(about("gone", type="session_ended"))
            assert "gone" in server.sim.manager  # within the grace period: still known (stopped)
            while not server.forgotten:  # 2 simulated seconds: 50 ms at 40x
                await asyncio.sleep(0.01)
            assert "gone" not in server.sim.manager and "gone" not in server.sim.sessions
            assert server.sim.manager.session_ids == ["keep"]

            await client.control("start", "gone")
            err = await errors(client)
            assert err["code"] == "illegal_control" and "forgotten" in err["message"], err
            for action in ("pause", "stop"):
                await client.control(action, "gone")
                err = await errors(client)
                assert err["code"] == "unknown_session", err
            await client.fault("disconnect", session_id="gone")
            assert (await errors(client))["code"] == "unknown_session"
            assert "gone" not in server.sim.manager
            # The other session talks on; nothing in the model tripped over the forgotten one.
            await client.expect(about("keep", event="audio"))
            assert server.pacer.errors == 0
            async with LiveClient(server.url) as late:
                first = await late.expect(lambda m: True)
                assert first["session_id"] == "keep" and first["event"] == "snapshot"

    run(main())


def test_forget_after_none_keeps_stopped_sessions() -> None:
    async def main() -> None:
        async with LiveServer(SCENARIO, port=0, speed=40, forget_after=None) as server, \
                LiveClient(server.url) as client:
            await client.control("start", "s")
            await client.expect(about("s", event="session_started"))
            await client.control("stop", "s")
            await client.expect(about("s", type="session_ended"))
            await asyncio.sleep(0.2)  # 8 simulated seconds
            assert server.sim.manager.status("s") == "stopped" and server.forgotten == 0

    run(main())


def test_simulation_forget_drops_only_stopped_sessions() -> None:
    sim = Simulation(SCENARIO, live=True)
    sim.control("a", "start")
    with pytest.raises(IllegalTransition):
        sim.forget("a")
    sim.control("a", "stop")
    sim.forget("a")
    assert "a" not in sim.sessions and "a" not in sim.manager
    with pytest.raises(IllegalTransition, match="forgotten"):
        sim.control("a", "start")


def test_an_unfiltered_client_that_controls_a_session_gets_each_message_once_and_leaves_no_trace() -> None:
    async def main() -> None:
        async with LiveServer(SCENARIO, port=0, speed=40) as server:
            async with LiveClient(server.url) as dashboard, LiveClient(server.url, session_id="x") as watcher:
                await dashboard.control("start", "x")  # watches all, and now "x" by its control too
                for client in (dashboard, watcher):
                    for _ in range(20):
                        await client.expect(about("x", event="audio"))
                    seqs = [m["seq"] for m in client.about("x")]
                    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # no gap, no duplicate
                    assert seqs[0] == 0
            while server.clients:
                await asyncio.sleep(0.01)
            # Disconnected clients are out of the broadcast index (a long-running server's memory).
            assert not server._watchers and not server._watch_all

    run(main())


def test_stats_publish_the_clock_that_maps_simulated_time_to_wall_time() -> None:
    async def main() -> None:
        async with LiveServer(SCENARIO, port=0, speed=20) as server, LiveClient(server.url) as client:
            base = server.http_url.rstrip("/")
            await client.control("start", "s")
            message = await client.expect(about("s", event="audio"))
            received = time.monotonic()
            loop = asyncio.get_running_loop()
            stats = await loop.run_in_executor(
                None, lambda: json.loads(urllib.request.urlopen(f"{base}/stats", timeout=10).read()))
            clock = stats["clock"]
            assert clock["speed"] == 20 and clock["paused"] is False
            assert stats["clients"] == 1 and stats["sessions"] == 1
            due = clock["origin_monotonic"] + (message["timestamp"] - clock["origin_sim"]) / clock["speed"]
            assert 0 <= received - due < 1.0  # delivered after it was due, and promptly
            assert abs(clock["origin_unix"] - (time.time() - (time.monotonic() - clock["origin_monotonic"]))) < 0.5
            lag = stats["pacer_lag"]
            assert lag["count"] > 0 and lag["p99_ms"] >= lag["p50_ms"] >= 0

    run(main())


def test_a_closed_connection_is_freed_by_reference_counting_alone() -> None:
    # pipesim serve collects long-lived objects rarely (pipesim.live.collector): a connection left in a
    # reference cycle (its writer task's frame holding it) would keep its compression buffers until then.
    async def main() -> None:
        async with LiveServer(SCENARIO, port=0, speed=40) as server:
            gc.collect()
            gc.disable()
            try:
                async with LiveClient(server.url, session_id="x") as watcher:
                    await watcher.control("start", "x")
                    await watcher.expect(about("x", event="audio"))
                    (client,) = server._clients
                    freed = weakref.ref(client), weakref.ref(client.ws)
                    del client
                while server.clients:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the handler's and the writer's tasks end
                assert [ref() for ref in freed] == [None, None]
            finally:
                gc.enable()

    run(main())
