"""The seq rule, over whole served runs: every message about a session has its own seq, one more than the one
before (0 on ``session_created``, ``session_ended`` included); a snapshot repeats the seq of the last message.

Checked on what clients of a live server receive, on its recording, on the messages of an offline trace and
on what a replay of each sends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import run

import pipesim
from pipesim.live import LiveClient, LiveServer, ReplayServer, load_replay
from pipesim.scenario import Scenario
from pipesim.trace import sent_messages

#: Sessions that arrive, talk two turns and end on their own; one scripted session paused, resumed, stopped.
BUSY = {"name": "seq-test", "seed": 8,
        "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 12}, "turns": 2,
                     "barge_in_probability": 0.3,
                     "scripted": [{"id": "story", "timeline": [
                         {"at": 0.0, "action": "start"}, {"at": 1.0, "speak": 2.0}, {"at": 4.0, "action": "pause"},
                         {"at": 6.0, "action": "start"}, {"at": 7.0, "speak": 1.0}, {"at": 12.0, "action": "stop"}]}]},
        "kafka": {"outages": [{"start_s": 5.0, "end_s": 9.0}], "request_timeout_s": 0.5, "max_retries": 1}}


def assert_seq_rule(messages: list[dict[str, Any]], *, from_start: bool = True) -> dict[str, list[int]]:
    """Check the rule on one client's messages; returns each session's seqs (snapshots left out).

    ``from_start``: the client saw every session from its ``session_created`` (else a session may first
    appear as a snapshot)."""
    last: dict[str, int] = {}
    seqs: dict[str, list[int]] = {}
    ended: set[str] = set()
    for m in messages:
        if m["type"] == "error":
            continue
        sid, seq = m["session_id"], m["seq"]
        assert sid not in ended, f"{sid}: a message after session_ended: {m}"
        if m.get("event") == "snapshot":
            assert sid not in last or seq == last[sid], f"{sid}: a snapshot must repeat the last seq: {m}"
            last[sid] = seq
            continue
        if sid in last:
            assert seq == last[sid] + 1, f"{sid}: seq {seq} after {last[sid]}: {m}"
        else:
            assert m["type"] == "session_created" and seq == 0 or not from_start, f"{sid} starts with {m}"
        last[sid] = seq
        seqs.setdefault(sid, []).append(seq)
        if m["type"] == "session_ended":
            ended.add(sid)
    return seqs


def test_every_message_of_a_served_run_has_its_own_seq_and_so_has_its_recording_and_replay(
        tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"

    async def main() -> None:
        async with LiveServer(Scenario.model_validate(BUSY), port=0, speed=40, record=recording) as server, \
                LiveClient(server.url) as dashboard:
            async with LiveClient(server.url, session_id="mine") as mine:
                await mine.control("start", "mine")
                await mine.expect(lambda m: m.get("event") == "audio")
                await mine.control("pause", "mine")
                await mine.expect(lambda m: m.get("event") == "session_paused")
                await mine.control("start", "mine")
                await mine.expect(lambda m: m.get("event") == "speech_started")
                # A late client: snapshots first, then the same rule.
                async with LiveClient(server.url) as late:
                    await late.expect(lambda m: m.get("event") not in (None, "snapshot"))
                await mine.control("stop", "mine")
                await mine.expect(lambda m: m["type"] == "session_ended")
            await dashboard.expect(lambda m: m["type"] == "session_ended" and m["session_id"] == "story")
            await dashboard.expect(lambda m: m["timestamp"] > 20.0, timeout=20)

        seen = assert_seq_rule(dashboard.messages, from_start=False)
        ended = {m["session_id"] for m in dashboard.messages if m["type"] == "session_ended"}
        assert {"mine", "story"} <= ended and len(ended) >= 4, ended  # stopped, and ended on their own
        assert assert_seq_rule(mine.messages) == {"mine": seen["mine"]}
        assert any(m.get("event") == "snapshot" for m in late.messages)
        assert_seq_rule(late.messages, from_start=False)
        recorded = [m for _, m in load_replay(recording)]
        assert_seq_rule(recorded)  # from the server's start: every session from its session_created

        async with ReplayServer(recording, port=0, speed=200) as replay, LiveClient(replay.url) as client:
            await replay.wait_finished()
            await client.expect(lambda m: len(client.messages) >= len(recorded))
        assert client.messages == recorded

    run(main())


def test_the_messages_of_an_offline_trace_and_its_replay_follow_the_rule(tmp_path: Path) -> None:
    res = pipesim.simulate(BUSY, progress=False)
    messages = [json.loads(text) for text in res.messages["message"]]
    seqs = assert_seq_rule(messages)
    assert sum(m["type"] == "session_ended" for m in messages) == len(seqs) == 13
    assert list(res.messages["seq"]) == [m["seq"] for m in messages]
    path = tmp_path / "trace.jsonl"
    res.trace.to_jsonl(path)
    from_file = pipesim.Trace.from_jsonl(path)
    assert [m for _, m in sent_messages(from_file)] == messages
    assert [m for _, m in load_replay(path)] == messages
