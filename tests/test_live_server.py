"""The live server: sessions driven by the real model over the orchestrator's WebSocket protocol.

Every test starts its own server on 127.0.0.1, port 0, at 20-40x speed, with no background sessions
unless it needs some, and stops it.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.error
import urllib.request
from typing import Any

import jsonschema
import pytest
from conftest import run, talking_scenario

from pipesim.cli import build_parser
from pipesim.live import LiveClient, LiveServer, serve_in_background
from pipesim.protocol import json_schemas

VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in json_schemas().items()}


scenario = functools.partial(talking_scenario, name="live-test")  # sessions that keep talking


def validate(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        VALIDATORS[message["type"]].validate(message)


def is_(session_id: str, **fields: Any) -> Any:
    """Predicate: a message about ``session_id`` whose fields have these values."""
    return lambda m: m.get("session_id") == session_id and all(m.get(k) == v for k, v in fields.items())


def test_a_session_from_start_to_stop_moves_through_every_state_and_every_message_is_valid() -> None:
    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=40) as server, \
                LiveClient(server.url, session_id="abc") as starter, \
                LiveClient(server.url, session_id="abc") as watcher, \
                LiveClient(server.url) as dashboard:
            await starter.control("start", "abc")
            await starter.expect(is_("abc", type="session_created"))
            # Two whole turns: listening -> processing -> complete -> listening -> ...
            await starter.expect(is_("abc", state="complete"))
            await starter.expect(is_("abc", state="processing", turn_id=2))
            await starter.control("stop", "abc")
            ended = await starter.expect(is_("abc", type="session_ended"))
            await watcher.expect(is_("abc", type="session_ended"))
            await dashboard.expect(is_("abc", type="session_ended"))

        mine = starter.about("abc")
        validate(mine)
        validate(dashboard.messages)
        assert watcher.about("abc") == mine == dashboard.about("abc")
        # Every message has its own seq, session_ended included: 0, 1, 2, ... (a client that drops
        # anything not newer than what it has must not drop session_ended).
        assert [m["seq"] for m in mine] == list(range(len(mine)))
        assert ended["seq"] == mine[-2]["seq"] + 1 and ended["reason"] == "stopped"
        updates = [m for m in mine if m["type"] == "pipeline_state_update"]
        assert mine[0]["type"] == "session_created"
        assert updates[0]["event"] == "session_started" and updates[0]["status"] == "active"
        assert updates[-1]["status"] == "stopped" and updates[-1]["event"] == "session_stopped"
        states = [updates[0]["state"]]
        for u in updates:
            if u["state"] != states[-1]:
                states.append(u["state"])
        assert states[:4] == ["listening", "processing", "complete", "listening"]
        for service in ("stt", "llm", "tts"):
            seen = {u["services"][service] for u in updates}
            assert {"idle", "waiting", "executing", "complete"} <= seen, (service, seen)
        assert any(u["event"] == "audio" and u["metadata"]["buffer_size"] > 0 for u in updates)
        assert all(0.0 <= u["metadata"]["audio_quality"] <= 1.0 for u in updates)
        times = [m["timestamp"] for m in mine]
        assert times == sorted(times)

    run(main())


def test_the_model_runs_in_real_time_scaled_by_speed() -> None:
    speed = 10.0

    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=speed) as server, LiveClient(server.url) as client:
            await client.control("start", "rt")
            await client.expect(is_("rt", state="complete"))  # one whole turn: ~10 simulated seconds
        t0, wall0 = client.messages[0]["timestamp"], client.arrivals[0]
        span = client.messages[-1]["timestamp"] - t0
        assert span > 5.0
        for message, wall in zip(client.messages, client.arrivals, strict=True):
            # Each message arrives when the wall clock reaches its simulated time / speed (give or take
            # the scheduler): neither all at once nor late.
            assert abs((wall - wall0) - (message["timestamp"] - t0) / speed) < 0.25, message

    run(main())


def test_pause_freezes_a_session_until_start_resumes_it_and_stop_ends_it() -> None:
    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=20) as server, \
                LiveClient(server.url, session_id="p") as client:
            await client.control("start", "p")
            await client.expect(is_("p", event="audio"))
            await client.control("pause", "p")
            paused = await client.expect(is_("p", event="session_paused"))
            assert paused["status"] == "paused" and paused["state"] == "listening"
            assert paused["services"] == {"stt": "idle", "llm": "idle", "tts": "idle"}
            assert paused["metadata"]["buffer_size"] == 0
            count = len(client.messages)
            await asyncio.sleep(1.0)  # 20 simulated seconds: an active session would have sent dozens
            assert len(client.messages) == count, client.messages[count:]
            assert server.sim.manager.status("p") == "paused"

            await client.control("start", "p")
            resumed = await client.expect(is_("p", event="session_resumed"))
            assert resumed["status"] == "active" and resumed["seq"] == paused["seq"] + 1
            await client.expect(is_("p", event="speech_started"))
            await client.expect(is_("p", event="audio"))

            await client.control("stop", "p")
            final = await client.expect(is_("p", type="pipeline_state_update", event="session_stopped"))
            assert final["status"] == "stopped"
            ended = await client.expect(is_("p", type="session_ended"))
            assert ended["seq"] == final["seq"] + 1
            count = len(client.messages)
            await asyncio.sleep(0.3)
            assert len(client.messages) == count  # nothing after session_ended
        validate(client.messages)

    run(main())


def test_controls_that_do_not_fit_get_an_error_naming_the_problem() -> None:
    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=20) as server, LiveClient(server.url) as client:
            for action in ("pause", "stop"):
                await client.control(action, "ghost")
                err = await client.expect(lambda m: m["type"] == "error")
                assert err["code"] == "unknown_session" and err["session_id"] == "ghost"
                assert "ghost" in err["message"] and action in err["message"]

            await client.control("start", "s")
            await client.expect(is_("s", event="session_started"))
            cases = [("start", "active"), ("pause", None), ("pause", "paused"), ("stop", None),
                     ("pause", "stopped"), ("start", "stopped"), ("stop", "stopped")]
            for action, refused_in in cases:
                await client.control(action, "s")
                if refused_in is None:
                    await client.expect(is_("s", type="pipeline_state_update"))
                    continue
                err = await client.expect(lambda m: m["type"] == "error")
                assert err["code"] == "illegal_control", err
                assert err["session_id"] == "s" and f"'{refused_in}'" in err["message"], err
            assert "ghost" not in server.sim.manager
        validate(client.messages)

    run(main())


def test_start_refuses_the_ids_the_scenario_will_create_itself() -> None:
    scripted = {"scripted": [{"id": "later", "timeline": [{"at": 1000.0, "action": "start"}]}],
                "arrivals": {"kind": "poisson", "rate_per_s": 0.001, "count": 5}}
    scn = scenario(sessions={**scenario().sessions.model_dump(), **scripted})

    async def main() -> None:
        async with LiveServer(scn, port=0, speed=20) as server, LiveClient(server.url) as client:
            for sid in ("later", "sim-00001"):
                await client.control("start", sid)
                err = await client.expect(lambda m: m["type"] == "error")
                assert err["code"] == "illegal_control" and "reserved" in err["message"], err
                assert sid not in server.sim.manager
            await client.control("start", "sim-1")  # not the scenario's pattern: fine
            await client.expect(is_("sim-1", type="session_created"))
            assert server.pacer.errors == 0

    run(main())


def test_filtered_clients_see_their_sessions_and_unfiltered_clients_see_all_with_a_snapshot_first() -> None:
    async def main() -> None:
        async with LiveServer(scenario(background=2), port=0, speed=20) as server:
            async with LiveClient(server.url) as dashboard, \
                    LiveClient(server.url, session_id="sim-00001") as one:
                # Connected after the background sessions were created: a snapshot of each comes first.
                snapshots = [await dashboard.expect(lambda m: True) for _ in range(2)]
                assert {m["session_id"] for m in snapshots} == {"sim-00001", "sim-00002"}
                assert all(m["event"] == "snapshot" and m["status"] == "active" for m in snapshots)
                first = await one.expect(lambda m: True)
                assert first["event"] == "snapshot" and first["session_id"] == "sim-00001"

                await dashboard.expect(is_("sim-00002", event="audio"))
                await one.expect(is_("sim-00001", event="audio"))
                # A filtered client also watches the sessions it starts, not the others.
                await one.control("start", "mine")
                await one.expect(is_("mine", type="session_created"))
                await dashboard.expect(is_("mine", type="session_created"))
                await one.expect(is_("sim-00001", event="audio"))
                assert {m["session_id"] for m in one.messages} == {"sim-00001", "mine"}
                # The snapshot's seq is the last one sent: the next real update follows it by one.
                later = one.about("sim-00001")[1:]
                assert later[0]["seq"] == first["seq"] + 1
            validate(dashboard.messages)
            validate(one.messages)

    run(main())


def test_kafka_stall_on_demand_makes_the_next_service_request_time_out() -> None:
    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=40) as server, \
                LiveClient(server.url, session_id="k") as client:
            await client.control("start", "k")
            await client.expect(is_("k", event="session_started"))
            await client.fault("kafka_stall", duration_s=60.0)
            timeout = await client.expect(is_("k", event="kafka_timeout"))
            assert timeout["state"] == "processing" and "waiting" in timeout["services"].values()
            failed = await client.expect(is_("k", event="turn_failed"))
            assert "Kafka timed out" in failed["error"]
            assert (server.sim.trace.kafka_windows_frame()["cause"] == "injected").any()
            # A fault that cannot be applied is answered, and nothing else changes.
            await client.fault("service_outage", duration_s=1.0)
            err = await client.expect(lambda m: m["type"] == "error")
            assert err["code"] == "bad_message" and "service" in err["message"]
        validate(client.messages)

    run(main())


def test_disconnect_fault_closes_the_connections_watching_that_session_only() -> None:
    async def main() -> None:
        async with LiveServer(scenario(), port=0, speed=20) as server, \
                LiveClient(server.url, session_id="x") as x_watcher, \
                LiveClient(server.url, session_id="y") as y_watcher, \
                LiveClient(server.url) as dashboard:
            await x_watcher.control("start", "x")
            await y_watcher.control("start", "y")
            await dashboard.expect(is_("x", event="session_started"))
            await dashboard.expect(is_("y", event="session_started"))

            await dashboard.fault("disconnect", session_id="x")
            code, reason = await x_watcher.wait_closed()
            assert code == 4000 and reason is not None and "disconnect" in reason
            # The others stay connected and keep receiving; the session itself goes on.
            await y_watcher.expect(is_("y", event="audio"))
            await dashboard.expect(is_("x", event="audio"))
            assert not y_watcher.closed and not dashboard.closed
            assert server.sim.manager.status("x") == "active"

            # Reconnecting picks the session up again, with a snapshot first.
            async with LiveClient(server.url, session_id="x") as again:
                snap = await again.expect(lambda m: True)
                assert snap["session_id"] == "x" and snap["event"] == "snapshot"

            await dashboard.fault("disconnect", session_id="nobody")
            err = await dashboard.expect(lambda m: m["type"] == "error")
            assert err["code"] == "unknown_session"

    run(main())


def test_http_routes_and_default_bind_address() -> None:
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    with serve_in_background(scenario(), port=0, speed=20) as bg:
        assert bg.server.host == "127.0.0.1"
        assert bg.call(lambda: bg.server._server.sockets[0].getsockname()[0]) == "127.0.0.1"
        assert bg.url == f"ws://127.0.0.1:{bg.port}/ws" and bg.port > 0
        base = f"http://127.0.0.1:{bg.port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
            assert r.status == 200 and r.read() == b"ok\n"
        with urllib.request.urlopen(f"{base}/", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert b"<" in r.read()
        for path in ("/nope", "/static/../server.py", "/ws/extra"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{base}{path}", timeout=10)
            assert info.value.code == 404
        assert bg.call(lambda: bg.server.clients) == 0
    assert not bg.running


def test_serve_in_background_works_while_another_event_loop_is_running() -> None:
    async def notebook_cell() -> None:
        # Like Jupyter: this coroutine runs on a loop, and the helper must not call asyncio.run on it.
        bg = serve_in_background(scenario(), port=0, speed=20)
        try:
            async with LiveClient(bg.url) as client:
                await client.control("start", "nb")
                await client.expect(is_("nb", event="speech_started"))
            assert bg.call(lambda: bg.server.sim.manager.status("nb")) == "active"
        finally:
            bg.stop()
        assert not bg.running

    run(notebook_cell())
