"""The admin API (``/__admin``): sessions, the virtual clock, faults, push, the journal, reset, access.

Every test starts its own server on 127.0.0.1 with the WebSocket and the admin API on free ports, talks
to the admin API over real HTTP (httpx2) from the server's own event loop, and stops it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the successor of httpx (Starlette's TestClient uses it too)
import pytest
from conftest import run, talking_scenario
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from websockets.asyncio.client import connect

from pipesim.live import LiveClient, LiveServer, ReplayServer
from pipesim.live import admin as admin_module
from pipesim.live.admin import Clock, ErrorBody, build_app, openapi
from pipesim.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}


scenario = functools.partial(talking_scenario, name="admin-test")  # sessions that keep talking


def arrivals_scenario() -> Scenario:
    """Sessions arriving over time (Poisson): nothing exists at t = 0, so two runs compare frame by frame."""
    return Scenario.model_validate({"name": "admin-arrivals", "seed": 11, "sessions": {
        "arrivals": {"kind": "poisson", "rate_per_s": 0.5, "count": 6}, "turns": 3}})


@asynccontextmanager
async def admin_server(scn: Scenario | None = None, paused: bool = False,
                       **kwargs: Any) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    """A live server with its admin API; ``paused``: the clock is paused at t = 0 before it starts."""
    kwargs.setdefault("speed", 20)
    server = LiveServer(scn or scenario(), port=0, admin_port=0, **kwargs)
    if paused:
        server.pacer.pause()
    async with server:
        assert server.admin_url is not None
        headers = {"Authorization": f"Bearer {kwargs['admin_token']}"} if kwargs.get("admin_token") else {}
        async with httpx.AsyncClient(base_url=server.admin_url, headers=headers, timeout=30) as http:
            yield server, http


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert "\n" not in message and "Traceback" not in message
    return message


# Sessions --------------------------------------------------------------------------------------------
def test_sessions_list_get_create_and_control_like_the_websocket_controls() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=2)) as (server, http):
            health = await ok(await http.get("/health"))
            assert health == {"status": "ok", "kind": "live", "scenario": "admin-test", "seed": 5}
            listed = (await ok(await http.get("/sessions")))["sessions"]
            assert [s["session_id"] for s in listed] == ["sim-00001", "sim-00002"]
            assert {s["created_by"] for s in listed} == {"scenario"}
            assert set(listed[0]) == {"session_id", "status", "state", "services", "turn_id", "seq", "buffer_size",
                                      "audio_quality", "created_by"}

            made = await ok(await http.post("/sessions", json={"session_id": "abc", "turns": 2,
                                                               "audio_quality": 0.9}), 201)
            assert made["session_id"] == "abc" and made["status"] == "active" and made["created_by"] == "admin"
            assert server.sim.sessions["abc"].n_turns == 2
            # audio_quality sets the user's level: a 0.9 user is well above the scenario's midpoint.
            assert server.sim.sessions["abc"].snr_db > server.scenario.quality.midpoint_db + 10
            generated = await ok(await http.post("/sessions", json={"start": False}), 201)
            assert generated["session_id"] == "admin-0001" and generated["status"] == "created"
            empty = await ok(await http.post("/sessions"), 201)  # no body: every option's default
            assert empty["session_id"] == "admin-0002" and empty["status"] == "active"

            error_of(await http.post("/sessions", json={"session_id": "abc"}), 409, "illegal_control")
            assert "reserved" in error_of(await http.post("/sessions", json={"session_id": "sim-00009"}), 409,
                                          "illegal_control")
            error_of(await http.get("/sessions/nope"), 404, "unknown_session")
            error_of(await http.post("/sessions/nope/pause"), 404, "unknown_session")

            paused = await ok(await http.post("/sessions/abc/pause"))
            assert paused["status"] == "paused"
            error_of(await http.post("/sessions/abc/pause"), 409, "illegal_control")
            assert (await ok(await http.post("/sessions/abc/start")))["status"] == "active"
            stopped = await ok(await http.post("/sessions/abc/stop"))
            assert stopped["status"] == "stopped"
            # seq is that of the last message sent: the session_ended after the stop.
            assert stopped["seq"] == server.sim.manager.snapshot("abc", 0).seq + 1
            error_of(await http.post("/sessions/abc/start"), 409, "illegal_control")
            assert (await ok(await http.get("/sessions/sim-00001")))["session_id"] == "sim-00001"

    run(main())


# The clock -------------------------------------------------------------------------------------------
def test_pause_freezes_time_and_messages_while_controls_from_clients_are_answered() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=3), speed=40) as (server, http), \
                LiveClient(server.url) as dashboard:
            await dashboard.expect(lambda m: m.get("event") == "audio")
            clock = await ok(await http.post("/clock/pause"))
            assert clock["paused"] is True
            await asyncio.sleep(0.1)  # what was queued before the pause reaches the client
            frozen_t, seen = clock["t"], len(dashboard.messages)
            await asyncio.sleep(0.6)  # 24 simulated seconds at 40x if it were running
            assert (await ok(await http.get("/clock")))["t"] == frozen_t
            assert len(dashboard.messages) == seen, dashboard.messages[seen:]

            # A client's controls are still answered, at the paused time.
            await dashboard.control("start", "late")
            created = await dashboard.expect(lambda m: m.get("session_id") == "late"
                                             and m["type"] == "session_created")
            assert created["timestamp"] == frozen_t
            await dashboard.control("pause", "sim-00001")
            update = await dashboard.expect(lambda m: m.get("session_id") == "sim-00001"
                                            and m.get("status") == "paused")
            assert update["timestamp"] == frozen_t
            await dashboard.control("pause", "ghost")
            error = await dashboard.expect(lambda m: m["type"] == "error")
            assert error["code"] == "unknown_session"
            assert (await ok(await http.get("/clock")))["t"] == frozen_t

            # Resume: no jump (the wall origin is re-anchored): at most 40x the request's wall time.
            wall = asyncio.get_running_loop().time
            w0 = wall()
            resumed = await ok(await http.post("/clock/resume"))
            assert resumed["paused"] is False
            assert frozen_t <= resumed["t"] <= frozen_t + 40 * (wall() - w0) + 1e-6
            await asyncio.sleep(0.3)
            assert (await ok(await http.get("/clock")))["t"] > frozen_t + 4

            # Speed: re-anchored too, so simulated time does not jump either way.
            w0 = wall()
            before = (await ok(await http.get("/clock")))["t"]
            slowed = await ok(await http.post("/clock/speed", json={"speed": 0.5}))
            assert slowed["speed"] == 0.5
            assert before <= slowed["t"] <= before + 40 * (wall() - w0) + 1e-6
            await asyncio.sleep(0.2)  # from w0 on, time runs at most at 40x then at 0.5x
            now = (await ok(await http.get("/clock")))["t"]
            assert slowed["t"] < now <= slowed["t"] + 0.5 * (wall() - w0) + 1e-6  # not 40x any more

    run(main())


def test_step_advance_and_run_until_are_exact() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=2)) as (server, http):
            await ok(await http.post("/clock/pause"))
            t0 = (await ok(await http.get("/clock")))["t"]

            moved = await ok(await http.post("/clock/advance", json={"seconds": 2.5}))
            assert moved["clock"]["t"] == pytest.approx(t0 + 2.5, abs=1e-9) and moved["clock"]["paused"]
            assert moved["transitions"], "sessions talk within 2.5 s"
            assert all(t0 <= m["timestamp"] <= t0 + 2.5 for m in moved["transitions"])
            assert server.sim.env.now == pytest.approx(t0 + 2.5, abs=1e-9)
            nothing = await ok(await http.post("/clock/advance", json={"seconds": 0}))
            assert nothing["transitions"] == [] and nothing["clock"]["t"] == moved["clock"]["t"]

            stepped = await ok(await http.post("/clock/step", json={"count": 3}))
            stamps = [m["timestamp"] for m in stepped["transitions"]]
            assert len([m for m in stepped["transitions"] if m["type"] != "session_ended"]) >= 3
            # The clock stops at the event that made the third transition, not later.
            assert stepped["clock"]["t"] == max(stamps) and stepped["clock"]["paused"]
            one = await ok(await http.post("/clock/step", json={}))
            assert len(one["transitions"]) >= 1 and one["clock"]["t"] == one["transitions"][-1]["timestamp"]

            reached = await ok(await http.post("/clock/run-until", json={
                "session_id": "sim-00002", "until": {"services.llm": "executing"}}))
            assert reached["reached"] is True and reached["clock"]["paused"]
            assert reached["session"]["services"]["llm"] == "executing"
            assert reached["session"]["state"] == "processing"
            assert server.sim.manager.snapshot("sim-00002", 0).llm == "executing"
            # Already there: answered at once, the clock does not move.
            again = await ok(await http.post("/clock/run-until", json={
                "session_id": "sim-00002", "until": {"services.llm": "executing", "status": "active"}}))
            assert again["clock"]["t"] == reached["clock"]["t"]

            late = await http.post("/clock/run-until", json={
                "session_id": "sim-00001", "until": {"status": "stopped"}, "timeout_s": 3})
            assert "did not reach" in error_of(late, 408, "timeout")
            assert late.json()["session"]["session_id"] == "sim-00001"
            assert late.json()["clock"]["t"] <= reached["clock"]["t"] + 3
            error_of(await http.post("/clock/run-until", json={"session_id": "sim-00001", "until": {}}), 422,
                     "bad_request")
            error_of(await http.post("/clock/run-until", json={"session_id": "zzz", "until": {"state": "complete"}}),
                     404, "unknown_session")

    run(main())


# Faults and pushes -------------------------------------------------------------------------------------
def test_faults_are_acknowledged_with_their_window_and_disconnect_closes_watchers() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1)) as (server, http):
            await ok(await http.post("/clock/pause"))
            now = (await ok(await http.get("/clock")))["t"]
            stall = (await ok(await http.post("/faults", json={"fault": "kafka_stall", "service": "llm",
                                                                "duration_s": 4})))["applied"]
            assert stall["fault"] == "kafka_stall" and stall["service"] == "llm"
            assert stall["from_t"] == now and stall["until_t"] == now + 4
            outage = (await ok(await http.post("/faults", json={"fault": "service_outage", "service": "tts"})))
            assert outage["applied"]["until_t"] == now + 5.0  # the WebSocket fault's default duration
            assert "service" in error_of(await http.post("/faults", json={"fault": "service_outage"}), 422,
                                         "bad_request")
            error_of(await http.post("/faults", json={"fault": "meteor"}), 422, "bad_request")
            error_of(await http.post("/faults", json={"fault": "disconnect", "session_id": "nope"}), 404,
                     "unknown_session")
            async with LiveClient(server.url, session_id="sim-00001") as watcher, LiveClient(server.url) as other:
                await watcher.expect(lambda m: m.get("event") == "snapshot")
                gone = (await ok(await http.post("/faults", json={"fault": "disconnect",
                                                                   "session_id": "sim-00001"})))["applied"]
                assert gone["disconnected"] == 1
                assert (await watcher.wait_closed())[0] == 4000
                assert not other.closed

    run(main())


def test_a_long_advance_answers_with_a_bounded_list_and_counts_every_transition() -> None:
    """An advance over a busy hour passes millions of transitions: the answer lists the first ``limit``
    (1,000 by default) and counts them all, instead of holding and sending every one."""
    async def main() -> None:
        async with admin_server(scenario(background=20)) as (server, http):
            await ok(await http.post("/clock/pause"))
            counted: list[int] = [0]
            server.sim.manager.subscribe(lambda tr: counted.__setitem__(0, counted[0] + 1))
            moved = await ok(await http.post("/clock/advance", json={"seconds": 60, "limit": 50}))
            assert moved["transitions_total"] == counted[0] > 50 and moved["truncated"] is True
            assert len({(m["session_id"], m["seq"]) for m in moved["transitions"]}) == len(moved["transitions"])
            assert 50 <= len(moved["transitions"]) <= 100  # 50 transitions (a session's end is two messages)
            stamps = [m["timestamp"] for m in moved["transitions"]]
            assert stamps == sorted(stamps)  # the first ones, in order
            default = await ok(await http.post("/clock/advance", json={"seconds": 600}))
            assert default["transitions_total"] > 1000 and default["truncated"] is True
            assert len([m for m in default["transitions"] if m["type"] != "session_ended"]) <= 1000
            small = await ok(await http.post("/clock/step", json={"count": 2}))
            assert small["truncated"] is False and small["transitions_total"] >= 2
            error_of(await http.post("/clock/advance", json={"seconds": 1, "limit": -1}), 422, "bad_request")

    run(main())


def test_push_validates_against_the_protocol_fills_seq_and_a_paused_clock_holds_timed_ones() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1)) as (server, http):
            await ok(await http.post("/clock/pause"))
            async with LiveClient(server.url, session_id="sim-00001") as watcher:
                snap = await watcher.expect(lambda m: m.get("event") == "snapshot")
                stall = {"type": "pipeline_state_update", "state": "processing",
                         "services": {"stt": "complete", "llm": "waiting", "tts": "idle"},
                         "metadata": {"buffer_size": 0, "audio_quality": 0.8}, "error": "LLM stalled"}
                crash = {"type": "error", "code": "unsupported", "message": "orchestrator crashed"}
                sent = await ok(await http.post("/sessions/sim-00001/push", json={"messages": [
                    {"message": stall}, {"message": crash, "after_s": 2.0}]}))
                assert sent == {"scheduled": 2}
                got = await watcher.expect(lambda m: m.get("error") == "LLM stalled")
                assert got["seq"] == snap["seq"] + 1 and got["timestamp"] == snap["timestamp"]
                assert got["session_id"] == "sim-00001"
                await asyncio.sleep(0.3)
                assert not any(m["type"] == "error" for m in watcher.messages), "held by the paused clock"
                await ok(await http.post("/clock/advance", json={"seconds": 2.0}))
                late = await watcher.expect(lambda m: m["type"] == "error")
                assert late == {**crash, "session_id": "sim-00001"}  # an error has no seq nor timestamp
                assert server.journal is not None
                sent_at = [e["t"] for e in server.journal.entries(type="error")]
                assert sent_at == [snap["timestamp"] + 2.0]
                # The model's own messages keep counting after the pushed ones. (The session may be quiet for
                # those 2 s, wherever the pause landed: one more step is one of its transitions, the only
                # session.)
                await ok(await http.post("/clock/step", json={"count": 1}))
                await watcher.expect(lambda m: m["type"] == "pipeline_state_update"
                                     and m["timestamp"] > snap["timestamp"] and m.get("error") != "LLM stalled")
                after = [m for m in watcher.messages if m["type"] == "pipeline_state_update"
                         and m["timestamp"] > snap["timestamp"] and m.get("error") != "LLM stalled"]
                assert after and all(m["seq"] > got["seq"] for m in after)
                seqs = [m["seq"] for m in watcher.messages[1:] if "seq" in m]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

            bad = dict(stall, state="thinking")
            message = error_of(await http.post("/sessions/sim-00001/push", json={"messages": [
                {"message": stall}, {"message": bad}]}), 422, "bad_request")
            assert message.startswith("body.messages[1].message.state"), message
            assert "thinking" in message
            unknown = error_of(await http.post("/sessions/sim-00001/push", json={"messages": [
                {"message": {"type": "conversation_control", "action": "start"}}]}), 422, "bad_request")
            assert unknown.startswith("body.messages[0].message: unknown message type"), unknown
            other = error_of(await http.post("/sessions/sim-00001/push", json={"messages": [
                {"message": dict(stall, session_id="sim-00002")}]}), 422, "bad_request")
            assert "body.messages[0].message.session_id" in other

    run(main())


def test_push_to_an_unknown_session_is_404_unless_allow_unknown_says_so() -> None:
    """As every other /sessions/{id}/... path: a misspelt id is 404, not a silent 200 that reaches nobody."""
    crash = {"type": "error", "code": "unsupported", "message": "orchestrator crashed"}

    async def main() -> None:
        async with admin_server(scenario(background=1)) as (server, http):
            await ok(await http.post("/clock/pause"))
            async with LiveClient(server.url, session_id="later") as watcher:
                await asyncio.sleep(0.1)
                message = error_of(await http.post("/sessions/sim-0001/push", json={"messages": [
                    {"message": crash}]}), 404, "unknown_session")
                assert "'sim-0001'" in message and "allow_unknown" in message
                error_of(await http.post("/sessions/later/push", json={"messages": [{"message": crash}]}), 404,
                         "unknown_session")
                sent = await ok(await http.post("/sessions/later/push", params={"allow_unknown": "true"},
                                                json={"messages": [{"message": crash}]}))
                assert sent == {"scheduled": 1}
                assert await watcher.expect(lambda m: m["type"] == "error") == {**crash, "session_id": "later"}
                error_of(await http.post("/sessions/later/push", params={"allow_unknown": "maybe"},
                                         json={"messages": [{"message": crash}]}), 422, "bad_request")

    run(main())


# The journal -----------------------------------------------------------------------------------------
def test_the_journal_records_a_websocket_pause_with_its_result_and_filters_and_clears() -> None:
    async def main() -> None:
        async with admin_server(scenario(background=1), speed=5) as (server, http):
            async with LiveClient(server.url) as page:
                await page.expect(lambda m: m.get("event") == "snapshot")
                await page.control("pause", "sim-00001")
                await page.expect(lambda m: m.get("status") == "paused")
                await page.control("pause", "abc")
                await page.expect(lambda m: m["type"] == "error")
                await page.send(b"not json")
                await page.expect(lambda m: m["type"] == "error" and m["code"] == "bad_message")

            controls = (await ok(await http.get("/journal", params={"type": "conversation_control"})))["entries"]
            assert [(e["session_id"], e["result"]) for e in controls] == [
                ("sim-00001", "applied"),
                ("abc", {"error": {"code": "unknown_session",
                                   "message": "pause: unknown session 'abc' (send start to create it)"}})]
            first = controls[0]
            assert first["direction"] == "in" and first["connection"] == "c1"
            assert first["message"] == {"type": "conversation_control", "action": "pause", "session_id": "sim-00001"}
            assert first["wall_time"].endswith("+00:00") and math.isfinite(first["t"])

            inbound = (await ok(await http.get("/journal", params={"direction": "in"})))["entries"]
            assert inbound[-1]["message"] == {"raw": "not json"} and inbound[-1]["result"]["error"]["code"] == \
                "bad_message"
            out = (await ok(await http.get("/journal", params={"direction": "out", "session_id": "sim-00001"})))
            assert all(e["connection"] is None and e["result"] is None for e in out["entries"])
            assert any(e["message"].get("status") == "paused" for e in out["entries"])
            # Broadcasts are journaled as the text sent (the live fast path) yet filter by type like the rest.
            updates = (await ok(await http.get("/journal", params={"type": "pipeline_state_update",
                                                                   "session_id": "sim-00001"})))["entries"]
            assert updates and all(e["message"]["type"] == "pipeline_state_update" for e in updates)
            errors = (await ok(await http.get("/journal", params={"type": "error"})))["entries"]
            assert {e["connection"] for e in errors} == {"c1"}
            assert len((await ok(await http.get("/journal", params={"limit": 2})))["entries"]) == 2

            total = len(server.journal)
            assert (await ok(await http.delete("/journal"))) == {"cleared": total}
            assert (await ok(await http.get("/journal", params={"direction": "in"})))["entries"] == []

    run(main())


def test_the_journal_reads_from_a_cursor_so_tests_need_not_clear_it() -> None:
    """``since`` (an entry id) lists what came after it; ``last_id`` is the mark, and it survives clear and
    reset; ``limit`` keeps the newest entries of what matches. The Python client does the same."""
    from pipesim.live import serve_in_background
    from pipesim.testing import AdminClient

    bg = serve_in_background(scenario(background=1), port=0, admin_port=0, speed=20)
    try:
        assert bg.server.admin_url is not None
        admin = AdminClient(bg.server.admin_url)
        admin.pause()
        admin.advance(5)
        everything = admin.journal()
        assert len(everything) > 3
        mark = admin.journal_mark()
        assert mark == everything[-1]["id"]
        assert admin.journal(since=mark) == []
        assert admin.journal(since=everything[1]["id"]) == everything[2:]
        assert admin.journal(since=everything[0]["id"], limit=2) == everything[-2:]
        admin.step(3)
        later = admin.journal(since=mark)
        assert later and all(e["id"] > mark for e in later)
        assert [e["id"] for e in later] == [e["id"] for e in admin.journal()][-len(later):]
        admin.reset()  # the journal is cleared, its ids go on: an old mark still means "after then"
        admin.step(3)
        after_reset = admin.journal(since=mark)
        assert after_reset and after_reset == admin.journal() and after_reset[0]["id"] > later[-1]["id"]
        with pytest.raises(Exception, match="since"):
            admin.journal(since=-1)
    finally:
        bg.stop()


# Reset -----------------------------------------------------------------------------------------------
async def frames_of(url: str, into: list[str]) -> None:
    async with connect(url) as ws:
        async for raw in ws:
            into.append(raw if isinstance(raw, str) else raw.decode())


async def first_twenty_seconds(server: LiveServer, http: httpx.AsyncClient, frames: list[str]) -> list[str]:
    start = len(frames)
    await ok(await http.post("/clock/advance", json={"seconds": 20}))
    await asyncio.sleep(0.3)  # let the writer deliver
    return frames[start:]


def test_reset_gives_the_same_messages_byte_for_byte_as_a_fresh_server_with_the_same_seed() -> None:
    async def fresh() -> list[str]:
        async with admin_server(arrivals_scenario(), paused=True) as (server, http):
            frames: list[str] = []
            reader = asyncio.ensure_future(frames_of(server.url, frames))
            await asyncio.sleep(0.2)
            got = await first_twenty_seconds(server, http, frames)
            reader.cancel()
            return got

    async def reset() -> tuple[list[str], list[str], list[str]]:
        async with admin_server(arrivals_scenario()) as (server, http):
            await ok(await http.post("/clock/pause"))
            frames: list[str] = []
            reader = asyncio.ensure_future(frames_of(server.url, frames))
            await asyncio.sleep(0.2)
            await ok(await http.post("/sessions", json={"session_id": "mine"}), 201)
            before = await first_twenty_seconds(server, http, frames)
            start = len(frames)
            clock = await ok(await http.post("/reset"))
            assert clock == {"t": 0.0, "paused": True, "speed": 20.0, "next_event_t": clock["next_event_t"]}
            await asyncio.sleep(0.2)
            endings = frames[start:]
            assert (await ok(await http.get("/journal")))["entries"] == []  # cleared; the paused clock adds none
            after = await first_twenty_seconds(server, http, frames)
            reader.cancel()
            return before, endings, after

    expected = run(fresh())
    before, endings, after = run(reset())
    assert expected, "sessions arrive within 20 s"
    assert after == expected
    ended = [json.loads(f) for f in endings]
    assert {m["session_id"] for m in ended} >= {"mine"} and {m["type"] for m in ended} == {"session_ended"}
    assert all(m["reason"] == "reset" for m in ended)
    assert before != expected  # the admin's own session made the first run differ


# Access ----------------------------------------------------------------------------------------------
def test_token_origin_host_and_content_type_are_checked() -> None:
    async def main() -> None:
        async with admin_server(admin_token="s3cret") as (server, http):
            assert server.admin_url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=server.admin_url, timeout=10) as anonymous:
                assert "token" in error_of(await anonymous.get("/health"), 401, "unauthorized")
                wrong = await anonymous.get("/health", headers={"Authorization": "Bearer nope"})
                assert "s3cret" not in error_of(wrong, 401, "unauthorized")
                assert (await anonymous.get("/health", params={"token": "s3cret"})).status_code == 401
            await ok(await http.get("/health"))
            assert "Origin" in error_of(await http.post("/clock/pause", headers={"Origin": "http://evil.example"}),
                                        403, "forbidden")
            assert (await http.get("/health", headers={"Origin": "http://localhost:5173"})).status_code == 200
            assert "Host" in error_of(await http.get("/health", headers={"Host": "rebind.example"}), 403, "forbidden")
            error_of(await http.post("/clock/speed", content=b'{"speed": 2}', headers={"Content-Type": "text/plain"}),
                     415, "bad_request")
            assert (await ok(await http.post("/clock/speed", content=b'{"speed": 2}', headers=JSON)))["speed"] == 2
            error_of(await http.get("/nothing"), 404, "not_found")
            error_of(await http.delete("/clock"), 405, "method_not_allowed")

    run(main())


# Bad bodies, generated ---------------------------------------------------------------------------------
ENDPOINTS = [  # (path, a valid body, the field to spoil)
    ("/__admin/clock/speed", {"speed": 2.0}, "speed"),
    ("/__admin/clock/step", {"count": 1}, "count"),
    ("/__admin/clock/advance", {"seconds": 1.0}, "seconds"),
    ("/__admin/clock/run-until", {"session_id": "a", "until": {"state": "complete"}}, "until"),
    ("/__admin/clock/run-until", {"session_id": "a", "until": {"state": "complete"}}, "timeout_s"),
    ("/__admin/faults", {"fault": "kafka_stall"}, "duration_s"),
    ("/__admin/faults", {"fault": "kafka_stall"}, "service"),
    ("/__admin/sessions", {"session_id": "x"}, "turns"),
    ("/__admin/sessions", {"session_id": "x"}, "audio_quality"),
    ("/__admin/sessions/a/push", {"messages": [{"message": {"type": "error", "code": "unsupported",
                                                            "message": "x"}}]}, "messages"),
    ("/__admin/stubs", {"when": {"type": "x"}, "then": {}}, "when"),
    ("/__admin/stubs", {"when": {"type": "x"}, "then": {}}, "then"),
    ("/__admin/stubs", {"when": {"type": "x"}, "then": {}}, "priority"),
    ("/__admin/journal/count", {"type": "x"}, "direction"),
    ("/__admin/journal/find", {"type": "x"}, "limit"),
]
BAD_VALUES = st.one_of(st.text(max_size=20).filter(lambda s: not _numeric(s)), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2),
                       st.integers(max_value=-1), st.floats(min_value=1e8, max_value=1e300), st.none())


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def app_client() -> Any:
    with TestClient(build_app(LiveServer(scenario(), port=0)), base_url="http://127.0.0.1") as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), value=BAD_VALUES, extra=st.booleans())
def test_bad_bodies_get_one_error_naming_the_field(app_client: Any, endpoint: tuple[str, dict[str, Any], str],
                                                   value: Any, extra: bool) -> None:
    path, body, field = endpoint
    spoiled = {**body, field: value}
    if extra:
        spoiled["no_such_option"] = 1
    response = app_client.post(path, json=spoiled)
    if response.status_code != 422:
        # A spoilt value that is still valid (None for an optional field): it must then be served.
        assert value is None and response.status_code < 500 and not extra, response.text
        return
    body_ = response.json()
    assert body_["error"]["code"] == "bad_request"
    message = body_["error"]["message"]
    assert message.startswith("body") and "\n" not in message
    assert f"body.{field}" in message or "body.no_such_option" in message, message


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b'"text"', b"{not json", b"1e999999", b'{"count": 1}' * 2])
def test_bodies_that_are_not_an_object_get_one_error(app_client: Any, raw: bytes) -> None:
    response = app_client.post("/__admin/clock/advance", content=raw, headers=JSON)
    assert response.status_code == 422 and response.json()["error"]["code"] == "bad_request", response.text


# Replay -----------------------------------------------------------------------------------------------
def replay_items() -> list[tuple[float, dict[str, Any]]]:
    """Session r: created at 0, then one update per simulated second (the state alternates), for 100 s."""
    items: list[tuple[float, dict[str, Any]]] = [
        (0.0, {"type": "session_created", "session_id": "r", "timestamp": 0.0, "seq": 0})]
    for k in range(1, 101):
        items.append((float(k), {"type": "pipeline_state_update", "session_id": "r",
                                 "state": "processing" if k % 2 else "listening",
                                 "services": {"stt": "idle", "llm": "idle", "tts": "idle"},
                                 "metadata": {"buffer_size": 0, "audio_quality": 0.5}, "timestamp": float(k),
                                 "seq": k}))
    return items


def test_a_replay_pauses_resumes_changes_speed_and_seeks_through_the_admin_api() -> None:
    async def main() -> None:
        async with ReplayServer(replay_items(), port=0, admin_port=0, speed=10) as server, \
                httpx.AsyncClient(base_url=server.admin_url, timeout=10) as http, \
                LiveClient(server.url) as client:
            await client.expect(lambda m: m.get("seq") == 3)
            held = await ok(await http.post("/clock/pause"))
            assert held["paused"] is True
            await asyncio.sleep(0.1)
            seen = len(client.messages)
            await asyncio.sleep(0.4)  # 4 messages at 10x if it were playing
            assert len(client.messages) == seen and (await ok(await http.get("/clock")))["t"] == held["t"]

            moved = await ok(await http.post("/replay/seek", json={"t": 50.5}))
            assert moved["t"] == 50.5 and moved["paused"] is True
            snap = await client.expect(lambda m: m.get("event") == "snapshot")
            assert snap["seq"] == 50 and snap["timestamp"] == 50.5
            fast = await ok(await http.post("/clock/speed", json={"speed": 100}))
            assert fast["speed"] == 100 and fast["t"] == 50.5
            await ok(await http.post("/clock/resume"))
            following = await client.expect(lambda m: m.get("seq") == 51 and m.get("event") != "snapshot")
            assert following["timestamp"] == 51.0
            await server.wait_finished()
            await client.expect(lambda m: m.get("seq") == 100)  # through the writer
            seqs = [m["seq"] for m in client.messages if m.get("event") != "snapshot"]
            before = seqs[:seqs.index(51)]  # up to the pause, in order; nothing between the pause and 50.5
            assert before == list(range(len(before))) and len(before) < 20
            assert seqs[len(before):] == list(range(51, 101))

    run(main())


def test_a_replay_answers_health_clock_and_journal_and_refuses_what_would_change_it() -> None:
    items = [(0.0, {"type": "session_created", "session_id": "r", "timestamp": 0.0, "seq": 0})]

    async def main() -> None:
        async with ReplayServer(items, port=0, admin_port=0) as server, \
                httpx.AsyncClient(base_url=server.admin_url, timeout=10) as http:
            assert (await ok(await http.get("/health")))["kind"] == "replay"
            assert (await ok(await http.get("/clock")))["paused"] is False
            for path, body in (("/clock/step", {}), ("/clock/advance", {"seconds": 1}), ("/reset", None),
                               ("/sessions/r/pause", None), ("/faults", {"fault": "kafka_stall"})):
                error_of(await http.post(path, json=body), 409, "unsupported")
            error_of(await http.get("/sessions"), 409, "unsupported")
            async with LiveClient(server.url) as client:
                await client.expect(lambda m: m["type"] == "session_created")
            out = (await ok(await http.get("/journal", params={"direction": "out"})))["entries"]
            assert [e["type"] for e in out] == ["session_created"]

    run(main())


# OpenAPI and the command line ---------------------------------------------------------------------------
def test_the_openapi_document_is_valid_and_the_cli_prints_what_the_server_serves() -> None:
    doc = openapi()
    validate_openapi(doc)
    printed = subprocess.run([sys.executable, "-m", "pipesim.cli", "schema", "--format", "openapi"],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert json.loads(printed) == doc
    for path in ("/__admin/sessions", "/__admin/clock/run-until", "/__admin/journal", "/__admin/reset",
                 "/__admin/sessions/{session_id}/push", "/__admin/replay/seek"):
        assert path in doc["paths"]

    async def served() -> Any:
        async with admin_server() as (_, http):
            return await ok(await http.get("/openapi.json"))

    assert run(served()) == doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_operation_has_a_description_and_examples_and_the_bearer_scheme_is_declared() -> None:
    doc = openapi()
    scheme = doc["components"]["securitySchemes"]["adminToken"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "--admin-token" in scheme["description"]
    assert doc["security"] == [{"adminToken": []}, {}]  # optional: only a server started with a token checks it
    schemas = {"ErrorBody": ErrorBody, "Clock": Clock}
    for method, path, op in _operations(doc):
        assert len(op.get("description", "")) > 20, (method, path)
        for status, response in op["responses"].items():
            content = response["content"]["application/json"]
            assert "example" in content and response["description"], (method, path, status)
            name = content["schema"]["$ref"].rsplit("/", 1)[1]
            model = schemas.get(name) or getattr(admin_module, name)
            model.model_validate(content["example"])  # the example is an answer the schema allows
        body = op.get("requestBody")
        if body is not None:
            examples = body["content"]["application/json"]["examples"]
            assert examples, (method, path)
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's own 422 body: never what we answer


#: What makes each operation answer each documented status, besides what every request can meet (a token
#: missing: 401, an Origin given twice: 400, a foreign Origin: 403, a text/plain POST: 415, a replay server: 409
#: where it cannot serve, an unknown option in the body or query: 422, an unknown session: 404).
RECORDING = str(Path(tempfile.gettempdir()) / f"pipesim-statuses-{os.getpid()}.jsonl")
SETUP: dict[tuple[str, str], list[tuple[str, str, Any]]] = {
    ("POST", "/__admin/sessions/{session_id}/start"): [("POST", "/__admin/sessions/sim-00001/pause", None)],
    ("POST", "/__admin/recording/stop"): [("POST", "/__admin/recording/start", {"path": RECORDING})],
}
EXTRA: dict[tuple[str, str], list[dict[str, Any]]] = {  # more bodies to send
    ("POST", "/__admin/clock/run-until"): [  # (the document's example is for frontend_demo's demo-1)
        {"session_id": "sim-00001", "until": {"services.llm": "executing"}},
        {"session_id": "nobody", "until": {"state": "complete"}},
        {"session_id": "sim-00001", "until": {"status": "stopped"}, "timeout_s": 0.5}],
    ("POST", "/__admin/faults"): [{"fault": "disconnect", "session_id": "nobody"}],
    ("POST", "/__admin/recording/start"): [{"path": RECORDING}],
}
#: Path parameters other than the session's: an id that exists (made by SETUP) and one that does not.
IDS = {"{stub_id}": ("listed", "nothing")}


async def _statuses_of(method: str, path: str, op: dict[str, Any], http: httpx.AsyncClient,
                       anonymous: httpx.AsyncClient, live: bool) -> set[int]:
    """Every status the operation answered to the requests that provoke each kind of answer."""
    seen: set[int] = set()
    key = (method, path)
    bodies: list[Any] = [None]
    if "requestBody" in op:
        bodies = [e["value"] for e in op["requestBody"]["content"]["application/json"]["examples"].values()]
    bodies = [*bodies, *EXTRA.get(key, []), {"no_such_option": 1}]
    for k, session_id in enumerate(("sim-00001", "nobody")):
        url = path.replace("{session_id}", session_id).removeprefix("/__admin")
        for name, ids in IDS.items():
            url = url.replace(name, ids[k])
        if live:
            for setup in SETUP.get(key, []):
                await http.request(setup[0], setup[1].removeprefix("/__admin"), json=setup[2])
            if "{stub_id}" in path:
                await http.post("/stubs", json={"id": "listed", "when": {"type": "x"}, "then": {}})
        for body in bodies:
            for _ in range(2):  # again: what the first one changed (a session paused) may refuse the second
                response = await http.request(method, url, json=body, params={"since": -1} if body == bodies[-1]
                                              and method == "GET" else None)
                seen.add(response.status_code)
        seen.add((await anonymous.request(method, url)).status_code)
        seen.add((await http.request(method, url, headers={"Origin": "http://evil.example"})).status_code)
        twice = [("Origin", "http://localhost:5173")] * 2  # (a client library refuses to send Host twice)
        seen.add((await http.request(method, url, headers=twice)).status_code)
        if method == "POST":
            seen.add((await http.request(method, url, content=b"{}", headers={"Content-Type": "text/plain"}))
                     .status_code)
    return seen


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in _operations(openapi())])
def test_each_operation_documents_exactly_the_statuses_it_answers(method: str, path: str) -> None:
    """The documented responses of an operation are the statuses its handler and the access checks can give:
    each is provoked here (on a live server and on a replay), and nothing undocumented comes back."""
    doc = openapi()
    op = doc["paths"][path][method.lower()]
    documented = {int(status) for status in op["responses"]}
    token = {"Authorization": "Bearer t0k"}

    async def main() -> set[int]:
        seen: set[int] = set()
        async with admin_server(scenario(background=2), admin_token="t0k") as (server, http), \
                httpx.AsyncClient(base_url=server.admin_url, timeout=30) as anonymous:
            seen |= await _statuses_of(method, path, op, http, anonymous, live=True)
        async with ReplayServer(replay_items(), port=0, admin_port=0, admin_token="t0k") as replay, \
                httpx.AsyncClient(base_url=replay.admin_url, headers=token, timeout=30) as http, \
                httpx.AsyncClient(base_url=replay.admin_url, timeout=30) as anonymous:
            seen |= await _statuses_of(method, path, op, http, anonymous, live=False)
        return seen

    assert run(main()) == documented


# Hostile bodies, generated for every operation that takes one -------------------------------------------
#: Literals that a JSON text may hold where a value goes: beyond what Python's decoder takes (5,000 digits),
#: deeper than the guarded reader allows, not strict JSON (NaN), or of the wrong type.
HOSTILE_LITERALS = ["9" * 5000, "-" + "9" * 5000, "9" * 400, "NaN", "Infinity", "-Infinity", "1e999",
                    "[" * 100 + "]" * 100, '{"a":' * 40 + "1" + "}" * 40, '"x"', "[]", "{}", "true", "null",
                    "-1", "0", "1.5"]
_RAW = "\u0000raw"  # a string no example holds: its JSON is replaced by the literal


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (its own, then its members', recursively)."""
    out = [path]
    if isinstance(value, dict):
        out += [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    elif isinstance(value, list):
        out += [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return out


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


def _rendered(path: tuple[Any, ...]) -> str:
    """``("messages", 0, "after_s")`` as the API names it: ``body.messages[0].after_s``."""
    return "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if p.isidentifier()
                            else f"[{json.dumps(p)}]" for p in path)


def _body_operations() -> list[tuple[str, Any]]:
    """``(path, example body)`` of every operation with a body (a session of the test server in its path)."""
    out = []
    for method, path, op in _operations(openapi()):
        for example in op.get("requestBody", {}).get("content", {}).get("application/json", {}).get(
                "examples", {}).values():
            out.append((method, path.replace("{session_id}", "sim-00001"), example["value"]))
    return out


@pytest.fixture(scope="module")
def served_admin() -> Any:
    """A paused live server in a thread, and an HTTP client of its admin API."""
    from pipesim.live import serve_in_background

    with serve_in_background(scenario(background=1), port=0, admin_port=0, speed=20) as bg:
        assert bg.server.admin_url is not None
        with httpx.Client(base_url=bg.server.admin_url, timeout=30) as http:
            http.post("/clock/pause").raise_for_status()
            yield http


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operation=st.sampled_from(_body_operations()), data=st.data(),
       literal=st.sampled_from(HOSTILE_LITERALS), cut=st.none() | st.integers(0, 200))
def test_a_hostile_body_gets_a_documented_status_and_names_its_field(served_admin: Any, operation: Any, data: Any,
                                                                     literal: str, cut: int | None) -> None:
    """Any body of any operation (a number of 5,000 digits, NaN, deep nesting, a wrong type anywhere, a
    truncated text): an answer the operation documents, and a 422 names the field (or says the body is not
    JSON, and where)."""
    method, path, example = operation
    field = data.draw(st.sampled_from(_leaves(example)))
    whole = json.dumps(_replaced(example, field, _RAW)).replace(json.dumps(_RAW), literal)
    text = whole[:cut] if cut is not None else whole
    response = served_admin.request(method, path.removeprefix("/__admin"), content=text.encode(),
                                    headers=JSON)
    documented = openapi()["paths"][path.replace("sim-00001", "{session_id}")][method.lower()]["responses"]
    assert str(response.status_code) in documented, (response.status_code, response.text)
    # The headers are right: no access refusal (400 is a header given twice; a body's number of 5,000 digits
    # was a 400 too, "There was an error parsing the body", naming nothing).
    assert response.status_code not in (400, 401, 403, 415), response.text
    if response.status_code != 422:
        return
    message = response.json()["error"]["message"]
    assert message.startswith("body") and "\n" not in message and len(message) < 1000, message
    if len(text) < len(whole):
        return  # cut short: the field where the text ends, or "not JSON"
    named = [_rendered(field[:n]) for n in range(len(field), 0, -1)]
    assert any(name in message for name in named) or (not field and message.startswith("body")), (field, message)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipesim.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PIPESIM_ADMIN_TOKEN": ""})


def test_serve_prints_one_json_line_with_its_ports_and_sigint_still_stops_it() -> None:
    proc = _cli("serve", "--port", "0", "--speed", "5")
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "listening" and line["pid"] == proc.pid
        assert line["ws"] == f"ws://127.0.0.1:{line['port']}/ws" and line["http"] == f"http://127.0.0.1:{line['port']}/"
        assert line["admin"] == f"http://127.0.0.1:{line['admin_port']}/__admin" and line["admin_port"] != 8002
        with httpx.Client(base_url=line["admin"], timeout=10) as http:
            assert http.get("/health").json()["scenario"] == "frontend_demo"
        proc.send_signal(signal.SIGINT)  # uvicorn must not have taken SIGINT over
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "pipesim: stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_busy_admin_port_is_one_clear_error_and_no_admin_turns_it_off() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _cli("serve", "--port", "0", "--admin-port", str(port))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and out == ""
        assert err.count("\n") == 1 and f"127.0.0.1:{port} for the admin API" in err and "--no-admin" in err

    proc = _cli("serve", "--port", "0", "--no-admin")
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["admin"] is None and line["admin_port"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
