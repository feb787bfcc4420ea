"""Replay: a simulated trace or a live recording served over the live protocol, in order and on time."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import run

import pipesim
from pipesim.cli import main as cli_main
from pipesim.live import LiveClient, LiveServer, ReplayServer, load_replay, replay_in_background
from pipesim.live.recording import Recorder
from pipesim.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"name": "replay-test", "seed": 3,
         "sessions": {"arrivals": {"kind": "at_once", "count": 3}, "turns": 2}}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], float]:
    """A small offline run saved as trace.jsonl, the messages a dashboard would have got, its duration."""
    res = pipesim.simulate(SMALL, progress=False)
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    res.trace.to_jsonl(path)
    messages = [json.loads(text) for text in res.messages["message"]]
    return path, messages, float(res.messages["t"].max())


def test_a_replayed_trace_sends_the_messages_of_the_offline_run_in_order_and_on_time(
        simulated: tuple[Path, list[dict[str, Any]], float]) -> None:
    path, expected, duration = simulated
    speed = 100.0

    async def main() -> None:
        async with ReplayServer(path, port=0, speed=speed) as server, LiveClient(server.url) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()  # playback starts when the first client connects
            await client.expect(lambda m: len(client.messages) == len(expected), timeout=20)
            await server.wait_finished()
            took = loop.time() - started
            assert client.messages == expected
            # Original timing divided by speed: not all at once, and not late.
            assert duration / speed * 0.8 <= took <= duration / speed + 2.0, (took, duration / speed)

    assert duration > 10
    run(main())


def test_a_replayed_recording_sends_what_the_live_server_sent(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    scn = Scenario.model_validate({**SMALL, "sessions": {"arrivals": {"kind": "at_once", "count": 0},
                                                         "turns": 1000}})

    async def main() -> None:
        async with LiveServer(scn, port=0, speed=40, record=recording) as live, LiveClient(live.url) as seen:
            await seen.control("start", "r")
            await seen.expect(lambda m: m.get("state") == "complete")
            await seen.control("stop", "r")
            await seen.expect(lambda m: m["type"] == "session_ended")
        assert live.recorder is not None and live.recorder.closed
        assert [m for _, m in load_replay(recording)] == seen.messages

        async with ReplayServer(recording, port=0, speed=40) as replay, \
                LiveClient(replay.url, session_id="r") as client:
            await client.expect(lambda m: m["type"] == "session_ended")
            assert client.messages == seen.messages
            # Controls cannot change a replay, model faults neither; both are answered.
            await client.control("pause", "r")
            err = await client.expect(lambda m: m["type"] == "error")
            assert err["code"] == "unsupported" and err["session_id"] == "r"
            await client.fault("kafka_stall")
            assert (await client.expect(lambda m: m["type"] == "error"))["code"] == "unsupported"
            await client.send("{")
            assert (await client.expect(lambda m: m["type"] == "error"))["code"] == "bad_message"

    run(main())


def test_a_recording_creates_its_missing_folders(tmp_path: Path) -> None:
    """``pipesim serve --record out/rec.jsonl`` works before ``out/`` exists, as ``pipesim run --out`` does."""
    path = tmp_path / "out" / "deeper" / "rec.jsonl"
    recorder = Recorder(path, {"scenario": "demo"})
    recorder.write(0.0, 1.0, {"type": "session_created", "session_id": "a", "timestamp": 1.0, "seq": 0})
    recorder.close()
    assert [m["session_id"] for _, m in load_replay(path)] == ["a"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError):  # a folder that cannot be made is still the server's clear error
        Recorder(blocker / "rec.jsonl")


def test_replay_loops_and_a_late_client_gets_a_snapshot(
        simulated: tuple[Path, list[dict[str, Any]], float]) -> None:
    path, expected, duration = simulated
    items = load_replay(path)

    async def main() -> None:
        async with ReplayServer(items, port=0, speed=duration / 1.5, loop=True) as server, \
                LiveClient(server.url) as first:
            await first.expect(lambda m: m.get("type") == "pipeline_state_update" and m["timestamp"] > 1.0)
            async with LiveClient(server.url, session_id="sim-00002") as late:
                snap = await late.expect(lambda m: True)
                assert snap["session_id"] == "sim-00002" and snap["event"] == "snapshot"
            await first.expect(lambda m: len(first.messages) >= 2 * len(expected) + 3, timeout=20)
            assert server.plays >= 2
            assert first.messages[len(expected):2 * len(expected)] == expected

    run(main())


def test_replay_in_background_for_notebooks(simulated: tuple[Path, list[dict[str, Any]], float]) -> None:
    path, expected, _ = simulated

    async def watch(url: str) -> list[dict[str, Any]]:
        async with LiveClient(url) as client:
            await client.expect(lambda m: len(client.messages) == len(expected), timeout=20)
            return client.messages

    with replay_in_background(path.parent, port=0, speed=200) as bg:  # a `run --out` folder works too
        assert bg.port > 0
        assert run(watch(bg.url)) == expected
        # /stats carries the replay's clock as /stats of a live server does (the dashboard's badge reads it).
        bg.call(bg.server.pause)
        stats = json.loads(urllib.request.urlopen(f"{bg.http_url.rstrip('/')}/stats", timeout=10).read())
        assert stats["clock"]["paused"] is True and stats["clock"]["speed"] == 200
    assert not bg.running


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


BAD_FILES: dict[str, tuple[list[str] | None, str]] = {
    "missing": (None, "cannot read"),
    "empty": ([], "empty"),
    "not_json": (["hello there"], ":1: not JSON"),
    "neither": (['{"some": "thing"}'], ":1: neither a pipesim recording nor a trace"),
    "bad_trace_line": (['{"record":"header","seed":1}', '{"record":"event","t":0.0,"session_id":"a","seq":0,'
                        '"event":"session_created","turn_id":0}', "{oops"], ":3: not a pipesim trace record"),
    "bad_recording_message": (['{"recording":"pipesim","version":1}',
                               '{"wall":0.0,"t":0.0,"message":{"type":"session_created","session_id":"a"}}'],
                              ":2: session_created.timestamp: required field is missing"),
    "recording_without_t": (['{"wall":0.0,"message":{"type":"session_created","session_id":"a",'
                             '"timestamp":0.0,"seq":0}}'], ":1: a recording line needs a number 't'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_replay_file_is_one_clear_error_and_exit_2(case: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lines, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.jsonl"
    if lines is not None:
        _write(path, lines)
    assert cli_main(["replay", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pipesim: error: {path}"), err
    assert expected in err, err


def test_pipesim_replay_command_serves_and_stops_on_sigterm(
        simulated: tuple[Path, list[dict[str, Any]], float]) -> None:
    path, expected, _ = simulated

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipesim.cli", "replay", str(path), "--port", "0", "--speed", "200",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            banner = (await proc.stdout.readline()).decode()
            match = re.search(r"ws://127\.0\.0\.1:\d+/ws", banner)
            assert match, banner
            async with LiveClient(match.group(0)) as client:
                await client.expect(lambda m: len(client.messages) == len(expected), timeout=20)
                assert client.messages == expected
                proc.send_signal(signal.SIGTERM)
                assert (await client.wait_closed())[0] == 1001
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    run(main())


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording of 100,000 messages: seconds to load (each message is checked against the protocol)."""
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    update = ('{"type":"pipeline_state_update","session_id":"a","state":"listening","services":{"stt":"idle",'
              '"llm":"idle","tts":"idle"},"metadata":{"buffer_size":0,"audio_quality":0.5}')
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"recording":"pipesim","version":1}\n{"wall":0.0,"t":0.0,"message":{"type":"session_created",'
                 '"session_id":"a","timestamp":0.0,"seq":0}}\n')
        fh.writelines(f'{{"wall":{k}.0,"t":{k}.0,"message":{update},"timestamp":{k}.0,"seq":{k}}}}}\n'
                      for k in range(1, 100_000))
    return path


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_while_a_replay_loads_stops_it_with_one_line(long_recording: Path, inherited: str) -> None:
    """SIGINT while ``pipesim replay`` loads (it says what it loads and how far it is past a second): it
    exits 130 at once with one line, no traceback, and never listens. Also when it was started with SIGINT
    ignored, as a shell starts a background job (it went on loading, then served: only the server's own
    handler heard Ctrl-C)."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "replay", str(long_recording), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigint if inherited == "ignored" else None)
    try:
        assert proc.stderr is not None
        progress = proc.stderr.readline()
        assert re.fullmatch(rf"pipesim: loading {re.escape(str(long_recording))}: \d+% \(\d+ s\)\n", progress)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 5, "Ctrl-C must stop the loading at once"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == "", "it must never listen"
    assert "Traceback" not in err and err.endswith("pipesim: interrupted\n"), err
    assert all(line.startswith(f"pipesim: loading {long_recording}: ") for line in err.splitlines()[:-1]), err


def test_a_load_that_takes_more_than_a_second_reports_its_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from pipesim.live import cli as live_cli

    now = [100.0]
    monkeypatch.setattr(live_cli.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    with live_cli.LoadingReport("run/", stream=stream) as report:
        for fraction in (0.1, 0.2, None, 0.4, 0.5, 0.6, 0.7, 0.9):  # one every 0.6 s
            report(fraction)
            now[0] += 0.6
    # Nothing within the first second, then a line every 2 s (not a terminal: no line rewritten in place).
    assert stream.getvalue().splitlines() == ["pipesim: loading run/: reading (1 s)",
                                              "pipesim: loading run/: 70% (4 s)"]
