"""Replay control: the playback cursor (pause, resume, speed, seek) and a ReplayServer's clients after a seek."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import run
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.live import LiveClient, ReplayServer, load_replay
from pipesim.live.playback import Playback

SMALL = {"name": "playback-test", "seed": 3,
         "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 0.5, "count": 6}, "turns": 2}}


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    pipesim.simulate(SMALL, progress=False).trace.to_jsonl(path)
    return path


def fold(messages: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """What a dashboard shows: each live session's last state, by the protocol's rules (a session_created
    starts a session afresh, an update older than what is shown is dropped, session_ended ends it)."""
    shown: dict[str, dict[str, Any]] = {}
    for m in messages:
        sid = m["session_id"]
        if m["type"] == "session_created":
            shown[sid] = {"seq": m["seq"], "ended": False, "view": None}
        elif m["type"] == "session_ended":
            shown.setdefault(sid, {})["ended"] = True
        elif sid in shown and not shown[sid]["ended"] and m["seq"] >= shown[sid]["seq"]:
            shown[sid].update(seq=m["seq"], view=(m["state"], json.dumps(m["services"], sort_keys=True),
                                                  m["status"], m["turn_id"], m["seq"]))
        elif sid not in shown:  # first seen as a snapshot (a late joiner)
            shown[sid] = {"seq": m["seq"], "ended": False, "view": (m["state"], json.dumps(
                m["services"], sort_keys=True), m["status"], m["turn_id"], m["seq"])}
    return {sid: s["view"] for sid, s in shown.items() if not s["ended"]}


# The cursor on a hand-driven clock ---------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _items(times: list[float]) -> list[tuple[float, dict[str, Any]]]:
    return [(t, {"type": "pipeline_state_update", "session_id": "a", "seq": i}) for i, t in enumerate(times)]


operations = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.floats(0, 5)),
    st.tuples(st.just("pause"), st.none()),
    st.tuples(st.just("resume"), st.none()),
    st.tuples(st.just("speed"), st.floats(0.1, 50)),
), max_size=30)


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0, 100), min_size=1, max_size=40).map(sorted), ops=operations)
def test_without_seeks_every_message_is_handed_out_once_in_order_and_on_time(
        times: list[float], ops: list[tuple[str, Any]]) -> None:
    clock = FakeClock()
    play = Playback(_items(times), clock=clock)
    out: list[int] = []
    for op, arg in [*ops, ("resume", None), ("speed", 1.0), ("wait", 200.0)]:
        before = play.position
        if op == "wait":
            clock.now += arg
        elif op == "pause":
            play.pause()
        elif op == "resume":
            play.resume()
        else:
            play.set_speed(arg)
        assert play.position >= before - 1e-9, "time never goes back without a seek"
        if op != "wait":
            assert math.isclose(play.position, before, abs_tol=1e-9), f"{op} must not move the position"
        for t, message in play.due():
            assert t <= play.position + 1e-9, "nothing is handed out before its time"
            out.append(message["seq"])
        delay = play.next_delay()
        assert delay is None or play.next_t - play.position == pytest.approx(delay * play.speed, abs=1e-6)
    assert out == list(range(len(times)))
    assert play.finished
    assert play.position == times[-1], "a finished playback stays at its last message"


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0, 100), min_size=1, max_size=40).map(sorted), t=st.floats(-10, 110))
def test_a_seek_leaves_exactly_the_messages_from_t_on(times: list[float], t: float) -> None:
    play = Playback(_items(times), clock=FakeClock())
    play.pause()
    play.seek(t)
    clamped = min(max(t, times[0]), times[-1])
    assert play.position == clamped
    play.resume()
    play._clock.now += 1e6
    rest = [m["seq"] for _, m in play.due()]
    assert rest == [i for i, x in enumerate(times) if x >= clamped]


@pytest.mark.parametrize("bad", [math.nan, math.inf, "3", True])
def test_a_seek_to_something_not_a_time_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="seek: t must be a finite number"):
        Playback(_items([0.0, 1.0])).seek(bad)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_a_speed_that_is_not_positive_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="speed must be a number > 0"):
        Playback(_items([0.0]), speed=1.0).set_speed(bad)


def test_sessions_at_is_what_the_messages_so_far_say(trace: Path) -> None:
    items = load_replay(trace)
    play = Playback(items)
    for index in range(0, len(items) + 1, 7):
        sessions = play.sessions_at(index)
        expected = fold([m for _, m in items[:index]])
        assert {sid: at.latest["seq"] if at.latest else None for sid, at in sessions.items()} == \
               {sid: view[-1] if view else None for sid, view in expected.items()}


# A ReplayServer's clients ------------------------------------------------------------------------------
def test_pause_seek_and_resume_bring_a_connected_client_to_the_state_as_of_t(trace: Path) -> None:
    items = load_replay(trace)
    start, end = items[0][0], items[-1][0]

    def as_of(t: float) -> dict[str, tuple[Any, ...]]:
        return fold([m for time, m in items if time < t])

    async def main() -> None:
        async with ReplayServer(trace, port=0, speed=10) as server, LiveClient(server.url) as client:
            await client.expect(lambda m: len(client.messages) >= 10, timeout=20)
            paused = server.pause()
            assert paused["paused"] and paused["t"] >= start
            await asyncio.sleep(0.1)
            count = len(client.messages)
            await asyncio.sleep(0.5)
            assert len(client.messages) == count, "nothing moves while the replay is paused"
            assert server.clock()["t"] == paused["t"]

            for t in (start + 0.7 * (end - start), start + 0.2 * (end - start), start + 0.5 * (end - start)):
                clock = server.seek(t)
                assert clock["t"] == t and clock["paused"]
                await asyncio.sleep(0.2)
                assert fold(client.messages) == as_of(t), f"after seek({t})"
                # A client connecting now sees the same (the seek is a late join for everyone).
                async with LiveClient(server.url) as late:
                    await asyncio.sleep(0.2)
                    assert fold(late.messages) == as_of(t)

            server.set_speed(200)
            server.resume()
            await client.expect(lambda m: m is client.messages[-1] and fold(client.messages) == {}
                                and m["type"] == "session_ended" and m["timestamp"] == end, timeout=20)
            assert fold(client.messages) == fold([m for _, m in items])  # every session ended, as recorded
            assert server.plays == 1

    run(main())


def test_a_seek_before_any_client_is_kept_and_the_end_can_be_sought_again(trace: Path) -> None:
    items = load_replay(trace)
    start, end = items[0][0], items[-1][0]
    middle = (start + end) / 2

    async def main() -> None:
        async with ReplayServer(trace, port=0, speed=1) as server:
            server.pause()
            server.seek(middle)
            async with LiveClient(server.url) as client:
                await asyncio.sleep(0.3)
                assert fold(client.messages) == fold([m for t, m in items if t < middle])
                assert server.clock() == {"t": middle, "paused": True, "speed": 1.0,
                                          "next_event_t": min(t for t, _ in items if t >= middle)}
                server.seek(end + 100)  # clamped: the last message is still to come
                server.set_speed(50)
                server.resume()
                await server.wait_finished()
                server.pause()
                server.seek(start)  # after the end, a seek back plays again
                server.resume()
                await client.expect(lambda m: m["type"] == "session_created", timeout=10)
                await client.expect(lambda m: m["timestamp"] == end and m["type"] == "session_ended", timeout=20)
                assert server.plays == 2

    run(main())
