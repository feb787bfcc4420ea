"""The live server at scale and over time: stopped sessions are forgotten, the broadcast index holds only
connected clients, and ``/stats`` publishes the clock that maps simulated time to wall time."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import sys
import time
import urllib.request
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import cyclic_garbage_kinds, run, talking_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.server import ServerProtocol

from pipesim.live import LiveClient, LiveServer
from pipesim.model import Simulation
from pipesim.model.simulation import _Session
from pipesim.scenario import Scenario
from pipesim.state import IllegalTransition, Transition, UnknownSession

SCENARIO = talking_scenario(name="memory-test", seed=3)


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
            assert not server.hub.watched_sessions and not server.hub.unfiltered

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
                    (client,) = server.hub.clients
                    freed = weakref.ref(client), weakref.ref(client.ws)
                    del client
                while server.clients:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the handler's and the writer's tasks end
                assert [ref() for ref in freed] == [None, None]
            finally:
                gc.enable()

    run(main())


# Churn: what a stopped session or a closed connection leaves to the cyclic collector ----------------------
# pipesim serve runs a full collection rarely (pipesim.live.collector): whatever churn leaves in a reference
# cycle stays until then (RSS about twice the steady state under churn). So with the cyclic collector off,
# a stopped and forgotten session's model objects must be freed by reference counting alone.

#: Sessions that fail, time out, queue (one worker each) and barge in: every way a turn can end.
ROUGH = talking_scenario(
    name="churn-test", seed=11, sessions={"barge_in_probability": 0.3},
    services={name: {"failure_probability": 0.1, "capacity": 1} for name in ("stt", "llm", "tts")},
    kafka={"request_timeout_s": 1.0, "stalls": {"rate_per_hour": 600}})


@contextmanager
def cyclic_collector_off() -> Iterator[None]:
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sessions_left(prefix: str) -> int:
    """Model sessions named ``prefix...`` still in memory (reachable or in cycles not yet collected)."""
    return sum(1 for o in gc.get_objects() if type(o) is _Session and o.id.startswith(prefix))


def stopped_when(scenario: Scenario, moment: Callable[[Simulation, Transition], bool]) -> int:
    """Start a session, step the model until ``moment`` holds for its last transition, stop and forget the
    session, run on for a minute: how many of its model sessions are still in memory, the collector off."""
    sim = Simulation(scenario, live=True)
    last: list[Transition] = []
    sim.manager.subscribe(last.append)
    with cyclic_collector_off():
        sim.control("churned", "start")
        while not moment(sim, last[-1]):
            sim.env.step()
        sim.control("churned", "stop")
        sim.forget("churned")
        del last[:]
        sim.env.run(until=sim.env.now + 60)
        return sessions_left("churned")


def test_a_session_stopped_while_its_user_speaks_is_freed_by_reference_counting() -> None:
    # The user's process waits for the end of speech, which the audio reports' chain would have triggered.
    assert stopped_when(SCENARIO, lambda sim, tr: tr.event == "audio") == 0


def test_a_session_stopped_before_the_llm_s_first_sentence_is_freed_by_reference_counting() -> None:
    # The turn's process waits for the LLM's first sentence, which the LLM no longer gives an ended turn.
    assert stopped_when(SCENARIO, lambda sim, tr: tr.event == "service_started" and tr.service == "llm") == 0


def test_a_session_stopped_while_tts_waits_for_the_llm_s_last_token_is_freed_by_reference_counting() -> None:
    # Speech far shorter than the LLM's stream: TTS finishes its audio first and waits for the last token.
    slow_llm = Scenario.model_validate({
        **SCENARIO.model_dump(), "services": {"llm": {"per_token_s": 0.5, "tokens": 40},
                                              "tts": {"audio_s_per_token": 0.01}}})

    def tts_waits_for_the_llm(sim: Simulation, tr: Transition) -> bool:
        turn = sim.sessions["churned"].turn
        return turn is not None and turn.llm_done is not None

    assert stopped_when(slow_llm, tts_waits_for_the_llm) == 0


def stopped_right_after(event: str, service: str | None = None, restart: bool = False) -> Simulation:
    """A session stopped between the model step whose last transition is ``event`` (of ``service``) and
    the next step, as a live control can be (the pacer handles controls between any two steps); with
    ``restart``, paused and started again first, in the same instant."""
    sim = Simulation(SCENARIO, live=True)
    last: list[Transition] = []
    sim.manager.subscribe(last.append)
    sim.control("a", "start")
    while not (last[-1].event == event and last[-1].service == service):
        sim.env.step()
    for action in ("pause", "start", "stop") if restart else ("stop",):
        sim.control("a", action)
    sim.env.run(until=sim.env.now + 60)
    return sim


@pytest.mark.parametrize("event, service, restart", [
    ("audio", None, True),                  # the restarted user's process: it would speak
    ("utterance_ended", None, False),       # the turn's process: it would request STT
    ("service_completed", "stt", False),    # the LLM's process: it would request the LLM
])
def test_a_process_made_just_before_a_stop_does_nothing_into_the_stopped_session(
        event: str, service: str | None, restart: bool) -> None:
    # A process starts one step after the step that made it; a stop in between left it to drive the
    # stopped session (IllegalTransition out of env.step(): a pacer error, the process's work lost).
    sim = stopped_right_after(event, service, restart)
    assert sim.manager.status("a") == "stopped"


#: (action, session, then: model steps (an int: a live control falls between any two) or simulated seconds).
CONTROLS = st.lists(st.tuples(st.sampled_from(["start", "pause", "stop", "speak"]), st.integers(0, 3),
                              st.one_of(st.integers(0, 40), st.sampled_from([0.5, 2.0, 6.0]))), max_size=30)
_examples = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONTROLS)
def test_churned_sessions_leave_nothing_to_the_cyclic_collector(controls: list[tuple[str, int, int | float]]) -> None:
    # Any sequence of controls on a few sessions, each followed by some model steps or simulated time, in a
    # scenario where turns fail, time out, queue and are barged into: once every session is stopped and
    # forgotten, none is left in memory with the cyclic collector off (and no process tripped over a stop).
    prefix = f"churn{next(_examples)}-"  # an earlier example that failed may still hold its sessions
    sim = Simulation(ROUGH, live=True)
    with cyclic_collector_off():
        for action, n, wait in controls:
            sid = f"{prefix}{n}"
            try:
                if action == "speak":
                    sim.speak_now(sid)
                else:
                    sim.control(sid, action)
            except (IllegalTransition, UnknownSession):
                pass  # a control that does not fit the session's state changes nothing
            if isinstance(wait, float):
                sim.env.run(until=sim.env.now + wait)
            else:
                for _ in range(wait):
                    if sim.env.peek() < math.inf:
                        sim.env.step()
        for sid in list(sim.sessions):
            if sim.manager.status(sid) != "stopped":
                sim.control(sid, "stop")
            sim.forget(sid)
        sim.env.run(until=sim.env.now + 120)
        assert sessions_left(prefix) == 0


def test_churned_connections_free_their_sessions_and_leave_only_library_cycles_behind() -> None:
    # Connections that each start a session, read a few updates, stop it and close; the session is then
    # forgotten: nothing of pipesim's or the model's is left for the cyclic collector, nor websockets'
    # ServerProtocol, which its own parser generator holds in a cycle (with its permessage-deflate state, some
    # 80 KB of zlib buffers outside Python's heap) until pipesim closes the generator once the connection is
    # closed. What is left is CPython 3.11's closed socket transport, which holds its own bound read callback
    # (_SelectorSocketTransport._read_ready_cb, python/cpython#100348, fixed in 3.12), with its closed
    # socket: one per end of each connection here (the client runs in this process too).
    churned = 8

    async def main() -> tuple[int, int, Counter[str]]:
        async with LiveServer(SCENARIO, port=0, speed=40, forget_after=1.0) as server:
            with cyclic_collector_off():
                for i in range(churned):
                    sid = f"churn-{i}"
                    async with LiveClient(server.url, session_id=sid) as client:
                        await client.control("start", sid)
                        for _ in range(3):
                            await client.expect(about(sid, event="audio"))
                        await client.control("stop", sid)
                        await client.expect(about(sid, type="session_ended"))
                while server.clients or server.forgotten < churned:
                    await asyncio.sleep(0.01)  # 1 simulated second: 25 ms at 40x
                await asyncio.sleep(0.1)  # the handlers' and writers' tasks end
                sessions = sessions_left("churn-")
                protocols = sum(1 for o in gc.get_objects() if type(o) is ServerProtocol)
                kinds = cyclic_garbage_kinds()
                return sessions, protocols, kinds

    sessions, protocols, kinds = run(main())
    assert sessions == 0
    assert not [kind for kind in kinds if kind.partition(".")[0] in ("pipesim", "simpy", "websockets")], kinds
    assert protocols == 0  # pipesim closes websockets' parser once the connection is closed (connection.free_protocol)
    transports = kinds["asyncio.selector_events._SelectorSocketTransport"]
    assert transports <= (0 if sys.version_info >= (3, 12) else 2 * churned), kinds
