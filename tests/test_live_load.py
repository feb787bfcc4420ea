"""``pipesim load`` against a real ``pipesim serve`` (port 0): figures present, nothing lost, the sessions it
started stopped again; a bad URL, a refused connection or a bad flag is one line and exit code 2."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "benchmarks" / "live_bench.yaml"  # no sessions of its own: only the load's


def pipesim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipesim", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "serve", str(SCENARIO), "--port", "0", "--no-admin"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["ws"]
    finally:
        proc.terminate()
        proc.wait(20)


def test_load_reports_every_figure_and_loses_nothing(server: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = pipesim("load", server, "--sessions", "12", "--dashboards", "1", "--duration", "3", "--warmup", "1",
                  "--workers", "2", "--json", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    for line in ("delivered", "lost", "latency", "pacer lag"):
        assert line in run.stdout
    assert "12 sessions + 1 dashboard on" in run.stdout and "(12 sessions, 1 dashboard)" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["connected"] == figures["clients"] == 13
    assert figures["lost"] == figures["slow"] == figures["broken"] == figures["refused"] == 0
    assert figures["messages"] > 0 and figures["dashboard_msgs_per_s"] > 0
    assert figures["msgs_per_s"] == figures["messages"] / 3
    for key in ("p50_ms", "p99_ms", "lag_p99_ms"):
        assert math.isfinite(figures[key]) and figures[key] >= 0, key
    assert figures["p50_ms"] <= figures["p99_ms"]
    assert figures["settle_s"] >= 0 and figures["lag_max_before_ms"] >= 0 and "before the window" in run.stdout
    # pipesim serve owns its process's garbage collector (pipesim.live.collector) and says what it did
    assert figures["server_gc"]["ticks"] >= 1 and "server gc" in run.stdout
    # It leaves the server as it found it: a dashboard connecting now gets no snapshot of a running session.
    with connect(server, open_timeout=30) as ws:
        snapshots, until = [], time.monotonic() + 1.0  # snapshots come first, at once: 1 s is plenty
        with contextlib.suppress(TimeoutError):
            while (left := until - time.monotonic()) > 0:
                snapshots.append(json.loads(ws.recv(timeout=left)))
    assert [m["session_id"] for m in snapshots if m.get("event") == "snapshot"] == []


def test_the_window_opens_once_the_server_has_caught_up(server: str) -> None:
    """After the warm-up the window waits until the server says it is no longer behind the wall clock (a
    full garbage collection as 1,000 connections arrive set it back by ~0.3 s, then seconds of catching up
    on a 2-core machine: the window opened in that tail, and p99 read 0.4 to 1.3 s)."""
    from pipesim.live.load import run_clients, server_stats

    answers = iter([False, False, False, True])
    asked: list[float] = []

    def caught_up() -> bool:
        asked.append(time.monotonic())
        return next(answers)

    out = run_clients(server, 2, 0, 1.0, 0.2, 1, server_stats(server)["clock"], caught_up=caught_up)
    assert len(asked) == 4 and out["settle_s"] >= asked[-1] - asked[0] >= 0.3
    assert out["messages"] > 0 and out["lost"] == 0
    assert server_stats(server)["clock"]["behind_s"] < 0.5  # a quiet server is not behind


def test_a_server_with_a_token_is_load_tested_with_it_and_refuses_without(tmp_path: Path) -> None:
    env = {**os.environ, "PIPESIM_TOKEN": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "serve", str(SCENARIO), "--port", "0", "--no-admin"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["ws"]
        args = ("load", url, "--sessions", "2", "--dashboards", "1", "--duration", "1", "--warmup", "0",
                "--workers", "1")
        without = pipesim(*args)
        assert without.returncode == 2 and without.stderr.count("\n") == 1, without.stdout + without.stderr
        assert "no client could connect (HTTP 403: a token is required" in without.stderr
        wrong = pipesim(*args, "--token", "guess")
        assert wrong.returncode == 2 and "HTTP 403: wrong token" in wrong.stderr
        right = pipesim(*args, "--token", "s3cret")
        assert right.returncode == 0, right.stdout + right.stderr
        assert "connected    3 of 3 clients" in right.stdout
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(("url", "says"), [
    ("ws://127.0.0.1:1/ws", "cannot connect to ws://127.0.0.1:1/ws: Connection refused"),
    ("http://127.0.0.1:8001/ws", "not a WebSocket URL"),
    ("ws://127.0.0.1:80x/ws", "not a valid URL"),
])
def test_a_bad_url_is_one_line(url: str, says: str) -> None:
    run = pipesim("load", url, "--duration", "1")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


@pytest.mark.parametrize(("flag", "says"), [
    (["--sessions", "0"], "--sessions: must be 1..10000, got 0"),
    (["--duration", "1e9"], "--duration: must be 1..3600 seconds, got 1e9"),
    (["--workers", "two"], "--workers: not a whole number: 'two'"),
])
def test_a_bad_flag_is_one_line(flag: list[str], says: str) -> None:
    run = pipesim("load", *flag)
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
