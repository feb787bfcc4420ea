"""``pipesim record``: a client's recording of a live server, through a dropped connection, replayed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run

from pipesim.cli import main as cli_main
from pipesim.errors import RecordError
from pipesim.live import LiveClient, LiveServer, ReplayServer, load_replay, serve_in_background
from pipesim.live.record_client import RecordingClient
from pipesim.scenario import Scenario

#: One session that talks for a few wall seconds at speed 10, so the drop falls in its middle.
TALKER = Scenario.model_validate({"name": "record-test", "seed": 4,
                                  "sessions": {"arrivals": {"kind": "at_once", "count": 1}, "turns": 8,
                                               "barge_in_probability": 0.0}})


async def _until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the recording must end with a complete line"
    return [json.loads(line) for line in text.splitlines()]


def test_a_recording_survives_a_dropped_connection_and_replays(tmp_path: Path) -> None:
    served, recorded = tmp_path / "served.jsonl", tmp_path / "recorded.jsonl"

    async def main() -> RecordingClient:
        async with LiveServer(TALKER, port=0, speed=10, record=served) as live:
            client = RecordingClient(live.url, recorded, retries=5, backoff_s=0.05, max_backoff_s=0.2)
            stop = asyncio.Event()
            task = asyncio.ensure_future(client.run(stop))
            # Flushed line by line: the file can be read while it is being written.
            await _until(lambda: recorded.exists() and len(_lines(recorded)) >= 4, "the first messages")
            async with LiveClient(live.url) as faulty:  # disconnect without a session: every connection
                await faulty.send({"type": "fault_injection", "fault": "disconnect"})
                await _until(lambda: faulty.closed, "the fault")
            await _until(lambda: client.stats.connections == 2, "the reconnection")
            await _until(lambda: "session_ended" in recorded.read_text(encoding="utf-8"), "the session's end")
            stop.set()
            assert await task is client.stats
        return client

    client = run(main())
    assert client.stats.drops == ["code 4000: fault injection: disconnect"]
    header, *rows = _lines(recorded)
    assert header["recording"] == "pipesim" and header["recorded_from"].startswith("ws://127.0.0.1:")
    messages = [m for _, m in load_replay(recorded)]
    reference = [m for _, m in load_replay(served)]  # everything the server broadcast
    assert messages[-1]["type"] == "session_ended"
    assert all(row["wall"] >= 0 for row in rows) and [r["wall"] for r in rows] == sorted(r["wall"] for r in rows)
    # Every message is one the server sent, in the server's order; a snapshot stands in for what was
    # missed while disconnected, and a repeated one is left out: seq rises strictly, session by session.
    live_messages = iter(reference)
    for m in messages:
        if m.get("event") != "snapshot":
            assert m in live_messages, m
    seqs: dict[str, list[int]] = {}
    for m in messages:
        seqs.setdefault(m["session_id"], []).append(m["seq"])
    assert all(s == sorted(set(s)) for s in seqs.values()), seqs
    snapshots_after_the_drop = sum(m.get("event") == "snapshot" for m in messages[1:])  # [0]: on joining
    assert client.stats.duplicates + snapshots_after_the_drop >= 1, "the reconnect snapshot was neither " \
                                                                     "recorded nor recognised as a repeat"
    # Most of the session was recorded: at most what happened during the short reconnect is missing.
    assert len(messages) >= 0.8 * len(reference)

    async def replay() -> list[dict[str, Any]]:
        async with ReplayServer(recorded, port=0, speed=100) as server, LiveClient(server.url) as seen:
            await server.wait_finished()
            await seen.expect(lambda m: len(seen.messages) == len(messages), timeout=10)
            return seen.messages

    assert run(replay()) == messages


def test_record_only_the_sessions_asked_for(tmp_path: Path) -> None:
    two = Scenario.model_validate({**TALKER.model_dump(mode="json"),
                                   "sessions": {"arrivals": {"kind": "at_once", "count": 2}, "turns": 2}})
    recorded = tmp_path / "one.jsonl"

    async def main() -> None:
        async with LiveServer(two, port=0, speed=20) as live:
            client = RecordingClient(live.url, recorded, ["sim-00001"])
            stop = asyncio.Event()
            task = asyncio.ensure_future(client.run(stop))
            await _until(lambda: recorded.exists() and "session_ended" in recorded.read_text(encoding="utf-8"),
                         "the session's end")
            stop.set()
            await task

    run(main())
    assert {m["session_id"] for _, m in load_replay(recorded)} == {"sim-00001"}


def test_gives_up_after_the_retries_with_the_file_complete(tmp_path: Path) -> None:
    recorded = tmp_path / "rec.jsonl"

    async def main() -> None:
        live = LiveServer(TALKER, port=0, speed=10)
        await live.start()
        client = RecordingClient(live.url, recorded, retries=2, backoff_s=0.01, max_backoff_s=0.02)
        task = asyncio.ensure_future(client.run())
        await _until(lambda: client.stats.messages >= 2, "the first messages")
        await live.stop()
        with pytest.raises(RecordError, match=r"gave up after 2 reconnection attempts \(cannot connect to .*"
                                              r"Connection refused\); recorded \d+ messages to "):
            await task
        assert client.stats.drops == ["code 1001: server shutting down"]

    run(main())
    assert len(_lines(recorded)) >= 3


def test_sigint_leaves_a_complete_recording(tmp_path: Path) -> None:
    recorded = tmp_path / "rec.jsonl"
    with serve_in_background(TALKER, port=0, speed=10) as bg:
        proc = subprocess.Popen([sys.executable, "-m", "pipesim", "record", bg.url, "--out", str(recorded)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not (recorded.exists() and len(_lines(recorded)) >= 5) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    count = len(_lines(recorded)) - 1
    assert count >= 4
    assert f"recorded {count} messages to {recorded}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:8001/ws", "http://127.0.0.1:8001/ws: not a WebSocket URL"),
    ("ws://[::1/ws", "ws://[::1/ws: not a valid URL"),
    ("ws://127.0.0.1:1/ws", "cannot connect to ws://127.0.0.1:1/ws: Connection refused"),
])
def test_a_bad_url_or_a_refused_connection_is_one_clear_line(url: str, says: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec.jsonl"
    assert cli_main(["record", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"pipesim: error: {says}" or err.startswith(f"pipesim: error: {says}"), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists(), "no recording is created when the first connection fails"


def test_a_refused_handshake_names_the_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve_in_background(TALKER, port=0, speed=10, token="s3cret") as bg:
        env_token = os.environ.pop("PIPESIM_TOKEN", None)
        try:
            assert cli_main(["record", bg.url, "--out", str(tmp_path / "r.jsonl")]) == 2
        finally:
            if env_token is not None:
                os.environ["PIPESIM_TOKEN"] = env_token
        err = capsys.readouterr().err
        assert err.startswith(f"pipesim: error: {bg.url}: the server refused the connection: HTTP 403"), err


def test_a_recording_made_across_a_reset_replays_end_to_end(tmp_path: Path) -> None:
    """``pipesim serve --record``, ``POST /__admin/reset``, ``pipesim replay``: the reset starts a new segment
    of the recording (time starts again at 0), and the replay plays both segments, every message in order."""
    import httpx2 as httpx

    recorded = tmp_path / "r.jsonl"
    cli = [sys.executable, "-m", "pipesim"]
    env = {**os.environ, "PIPESIM_ADMIN_TOKEN": "", "PIPESIM_TOKEN": ""}
    serve = subprocess.Popen([*cli, "serve", "--port", "0", "--speed", "20", "--record", str(recorded)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert serve.stdout is not None
        admin = json.loads(serve.stdout.readline())["admin"]
        with httpx.Client(base_url=admin, timeout=20) as http:
            http.post("/clock/pause").raise_for_status()
            http.post("/clock/advance", json={"seconds": 4}).raise_for_status()
            http.post("/reset").raise_for_status()
            http.post("/clock/advance", json={"seconds": 2}).raise_for_status()
        serve.send_signal(signal.SIGINT)
        _, err = serve.communicate(timeout=20)
        assert serve.returncode == 0, err
    finally:
        if serve.poll() is None:
            serve.kill()
    lines = _lines(recorded)
    segments = [i for i, line in enumerate(lines) if "segment" in line]
    assert len(segments) == 1 and lines[segments[0]]["reason"] == "reset"
    first, second = lines[1:segments[0]], lines[segments[0] + 1:]
    assert first and second and second[0]["t"] < first[-1]["t"], "the model's time went back at the reset"
    recorded_messages = [line["message"] for line in lines if "message" in line]
    items = load_replay(recorded)
    assert [m for _, m in items] == recorded_messages
    times = [t for t, _ in items]
    assert times == sorted(times) and times[-1] == first[-1]["t"] + second[-1]["t"]

    replay = subprocess.Popen([*cli, "replay", str(recorded), "--port", "0", "--speed", "100"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert replay.stdout is not None
        ws = json.loads(replay.stdout.readline())["ws"]

        async def watch() -> list[dict[str, Any]]:
            async with LiveClient(ws) as client:
                await client.expect(lambda m: len(client.messages) == len(recorded_messages), timeout=20)
                return client.messages

        assert run(watch()) == recorded_messages
        replay.send_signal(signal.SIGTERM)
        _, err = replay.communicate(timeout=20)
        assert replay.returncode == 0 and "Traceback" not in err, err
    finally:
        if replay.poll() is None:
            replay.kill()
