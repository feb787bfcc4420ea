"""The live server under load, beside a bare ``websockets`` server, in the same run (absolute figures on a
shared machine are noise; the ratio is not).

For each size N: ``pipesim serve benchmarks/live_bench.yaml`` in a subprocess on 127.0.0.1 port 0; N client
connections in worker processes (asyncio + websockets each), every one starting and watching its own
session; plus a few dashboard connections watching all: the load generator of ``pipesim load``
(:mod:`pipesim.live.load`). After a warm-up, and once the server has caught up with the wall clock, a
measurement window of fixed wall length (``settle``: seconds waited past the warm-up; ``ramp ms``: the
pacer's worst lag before the window, e.g. the full garbage collection that 1,000 new connections set off).
Then a bare ``websockets`` server (its own process) sends a pre-encoded message of the same size to as many
clients at the same per-client rates as pipesim delivered, measured the same way.

Figures: delivered messages/s; messages lost (``seq`` gaps) by clients that kept up (must be 0); clients
disconnected as too slow; p50/p99 latency from the transition's simulated time, scaled to wall time by the
clock origin ``GET /stats`` publishes, to receipt; the pacer's lag p99 (``/stats``); server CPU seconds per
delivered message (``/proc/PID/stat``) and its ratio to the bare server's.

Targets (``--speed 1``, 100 and 1,000 sessions): CPU/msg at most 3x bare, p99 latency < 50 ms, pacer lag
p99 < 10 ms, 0 lost. ``--ramp`` then doubles the speed at the largest size until a target breaks.
``--soak`` instead runs the memory soak (see :func:`soak`). ``--bot-audio`` instead compares RTVI sessions
with and without the bot's audio (see :func:`bot_audio`; target: at most 2x the CPU per session).

``--fanout W ...`` instead measures the fan-out: W clients (over ``--workers`` processes) each watching every
session (plain ``/ws``) of ``pipesim serve benchmarks/fanout_bench.yaml --speed 10`` with 200/W sessions (100
at most) that talk from the first second (``baseline``'s arrivals take 25 simulated seconds to reach their
steady number); then the bare server ``websockets.broadcast()``-ing a pre-encoded message of pipesim's mean
size to W clients at the rate each pipesim client received, a wake-up per message, its clients reading each
message as JSON as pipesim's do (both sides negotiate the library's default permessage-deflate: the clients
are the same code); then the same server with nobody watching, whose CPU (the model, the encoder, the
journal: everything but the delivery) is printed per delivered message (``model us``) and taken out of
pipesim's in ``hub`` (what the rest costs, as a multiple of bare). 200/W sessions keep the messages
delivered in all near 3,000 a second beyond 2 watchers (1,550 a second to each of 1 or 2): ``serve baseline
--speed 10`` asks for 93,000 a second at 50 watchers, more than this 2-core machine's server and clients
can deliver; they then fall seconds behind, and the server writes many messages per system call, which is
cheaper per message than bare and no longer the fan-out one means to measure (``--fanout-scenario baseline``
runs it all the same). A row whose window never found the server caught up (``settle`` at its limit) says
``behind``. Target: CPU per delivered message at most 1.5x bare.

``--quick`` (CI): 10 sessions, a few seconds, asserts that messages flowed and none was lost, nothing about
speed (the fan-out, three servers and a bare one, takes about 20 s more: not in it).

    .venv/bin/python benchmarks/bench_live.py                 # 100 and 1,000 sessions, then the ramp
    .venv/bin/python benchmarks/bench_live.py --sizes 1000 --no-ramp
    .venv/bin/python benchmarks/bench_live.py --soak          # RSS over >= 30 min of simulated time
    .venv/bin/python benchmarks/bench_live.py --soak --soak-dialect rtvi   # the same, churning /rtvi
    .venv/bin/python benchmarks/bench_live.py --bot-audio     # RTVI sessions with and without bot audio
    .venv/bin/python benchmarks/bench_live.py --fanout 1 50 200   # W clients watching everything
    .venv/bin/python benchmarks/bench_live.py --quick

Writes ``out/bench/live.json`` (``live_soak.json`` for ``--soak``, ``live_bot_audio.json`` for
``--bot-audio``, ``live_fanout.json`` for ``--fanout``) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

from pipesim.live.bot_audio import FRAME_S
from pipesim.live.load import SETTLE_LIMIT_S, raise_fd_limit, run_clients, run_load
from pipesim.live.rtvi_codec import decode_frame, encode_message

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "live_bench.yaml"
OUT = Path("out/bench")
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {"cpu_ratio": 3.0, "p99_ms": 50.0, "lag_p99_ms": 10.0, "fanout_cpu_ratio": 1.5}
#: The fan-out's scenario (``--fanout``): sessions that talk from the first second to the last.
FANOUT_SCENARIO = HERE / "fanout_bench.yaml"
#: Unless ``--fanout-scenario`` is given, ``FANOUT_SCENARIO`` with this many sessions over the number of
#: watchers (100 at most): about 3,000 messages a second delivered in all at 10x beyond 2 watchers, which the
#: server and its clients sustain side by side on 2 cores shared with other work (at 8,000 and a load average
#: of 10 the clients fell seconds behind at 50 and 200 watchers).
FANOUT_SESSION_WATCHERS = 200


# The server and its numbers ----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, seconds (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Serve:
    """``pipesim serve`` in a subprocess on a free port."""

    def __init__(self, speed: float, extra: list[str] = (), scenario: str | Path = SCENARIO) -> None:
        # Its log goes to a file: a pipe nobody reads would fill up and stall the server mid-run.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipesim", "serve", str(scenario), "--port", "0", "--speed", f"{speed:g}",
             *extra], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        try:
            self.url = json.loads(line)["ws"]  # the machine-readable first line of pipesim serve
        except (ValueError, KeyError):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"pipesim serve did not start: {line}{self.log.read()}") from None
        self.base = self.url.replace("ws://", "http://").removesuffix("/ws")
        self.pid = self.proc.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/stats", timeout=60) as response:
            return json.loads(response.read())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        self.log.seek(0)
        err = self.log.read()
        self.log.close()
        return err


# The bare server -----------------------------------------------------------------------------------------
def _bare_process(port: Any, size: int, session_rate: float, broadcast_rate: float) -> None:
    # One real-looking message padded to the size pipesim's averaged, encoded once.
    payload = json.dumps({"type": "pipeline_state_update", "pad": ""})
    payload = payload.replace('""', '"' + "x" * max(0, size - len(payload)) + '"')

    async def main() -> None:
        groups: dict[str, set[Any]] = {"s": set(), "d": set()}

        async def handler(ws: Any) -> None:
            kind = "s" if "session_id" in (ws.request.path if ws.request else "") else "d"
            groups[kind].add(ws)
            try:
                await ws.wait_closed()
            finally:
                groups[kind].discard(ws)

        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            port.value = server.sockets[0].getsockname()[1]
            loop = asyncio.get_running_loop()
            credit, last, turn = 0.0, loop.time(), 0
            while True:
                # As pipesim sends: each "transition" goes to one session client (in turn) and to every
                # dashboard, spread over time in 1 ms ticks rather than in bursts. The fan-out (no session
                # clients): ``broadcast_rate`` messages a second to every dashboard, a wake-up per message (as
                # pipesim's pacer wakes per event), at most one a ms.
                await asyncio.sleep(0.001 if groups["s"] or not broadcast_rate else max(0.001, 1 / broadcast_rate))
                now = loop.time()
                clients = list(groups["s"])
                credit += (session_rate * len(clients) + broadcast_rate * bool(groups["d"])) * (now - last)
                last = now
                while credit >= 1 and (clients or groups["d"]):
                    credit -= 1
                    if clients:
                        turn = (turn + 1) % len(clients)
                        broadcast([clients[turn], *groups["d"]], payload)
                    else:
                        broadcast(groups["d"], payload)

    asyncio.run(main())


#: A clock for the bare server's clients that makes them read each message as JSON, as pipesim's do (its
#: messages name no session, so nothing else is done with them).
PARSING = {"origin_monotonic": 0.0, "origin_sim": 0.0, "speed": 1.0}


def run_bare(sessions: int, dashboards: int, seconds: float, warmup: float, workers: int, size: int,
             session_rate: float, broadcast_rate: float = 0.0, dashboard_workers: int | None = None,
             parse: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    port = ctx.Value("i", 0)
    proc = ctx.Process(target=_bare_process, args=(port, size, session_rate, broadcast_rate), daemon=True)
    proc.start()
    while not port.value:
        time.sleep(0.05)
    try:
        out = run_clients(f"ws://127.0.0.1:{port.value}/ws", sessions, dashboards, seconds, warmup, workers,
                          PARSING if parse else None,
                          on_window=lambda: cpu_seconds(proc.pid), dashboard_workers=dashboard_workers)
    finally:
        proc.kill()
        proc.join()
    start, end = out.pop("window")
    out["cpu_user_s"], out["cpu_sys_s"] = end[0] - start[0], end[1] - start[1]
    out["cpu_s"] = out["cpu_user_s"] + out["cpu_sys_s"]
    out["cpu_per_msg_us"] = 1e6 * out["cpu_s"] / max(out["messages"], 1)
    return out


# One size ------------------------------------------------------------------------------------------------
def run_pipesim(sessions: int, speed: float, dashboards: int, seconds: float, warmup: float,
                workers: int, profile: Path | None = None, scenario: str | Path = SCENARIO,
                dashboard_workers: int | None = None) -> dict[str, Any]:
    server = Serve(speed, scenario=scenario)
    spy = None
    try:
        def on_window() -> dict[str, Any]:
            nonlocal spy
            point = {"cpu": cpu_seconds(server.pid), "rss_mb": rss_mb(server.pid)}
            if profile is not None and spy is None:
                raw = ["--format", "raw"] if profile.suffix == ".txt" else []  # raw: collapsed stacks
                spy = subprocess.Popen(["py-spy", "record", "-o", str(profile), *raw, "--pid", str(server.pid),
                                        "--duration", str(int(seconds)), "--rate", "50", "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return point

        out = run_load(server.url, sessions, dashboards, seconds, warmup, workers, on_window=on_window,
                       dashboard_workers=dashboard_workers)
    finally:
        if spy is not None:
            spy.wait(60)
        err = server.stop()
    start, end = out.pop("window")
    out["cpu_user_s"], out["cpu_sys_s"] = end["cpu"][0] - start["cpu"][0], end["cpu"][1] - start["cpu"][1]
    out["cpu_s"] = out["cpu_user_s"] + out["cpu_sys_s"]
    out["cpu_per_msg_us"] = 1e6 * out["cpu_s"] / max(out["messages"], 1)
    out["rss_mb"] = end["rss_mb"]
    if "Traceback" in err:
        out["server_stderr"] = err[-2000:]
    return out


def measure(sessions: int, speed: float, dashboards: int, seconds: float, warmup: float, workers: int,
            profile: Path | None = None) -> dict[str, Any]:
    """pipesim, then the bare server at the per-client rates pipesim delivered."""
    live = run_pipesim(sessions, speed, dashboards, seconds, warmup, workers, profile)
    session_rate = (live["msgs_per_s"] - live["dashboard_msgs_per_s"]) / max(sessions, 1)
    bare = run_bare(sessions, dashboards, seconds, min(warmup, 2.0), workers, round(live["mean_bytes"]),
                    session_rate)
    ratio = live["cpu_per_msg_us"] / max(bare["cpu_per_msg_us"], 1e-9)
    met = {"cpu_ratio": ratio <= TARGETS["cpu_ratio"], "p99": live["p99_ms"] < TARGETS["p99_ms"],
           "lag": live["lag_p99_ms"] < TARGETS["lag_p99_ms"],
           "lost": live["lost"] == 0 and live["slow"] == 0 and live["server_slow_disconnects"] == 0}
    return {"sessions": sessions, "dashboards": dashboards, "speed": speed, "pipesim": live, "bare": bare,
            "cpu_ratio": ratio, "targets_met": met, "ok": all(met.values())}


def row(r: dict[str, Any]) -> str:
    p, b = r["pipesim"], r["bare"]
    return (f"{r['sessions']:>6} {r['speed']:>6g} {p['msgs_per_s']:>9.0f} {b['msgs_per_s']:>9.0f} "
            f"{p['mean_bytes']:>6.0f} "
            f"{p['lost']:>5} {p['slow']:>5} {p['p50_ms']:>7.1f} {p['p99_ms']:>7.1f} {p['lag_p99_ms']:>7.1f} "
            f"{p['cpu_per_msg_us']:>8.1f} {b['cpu_per_msg_us']:>8.1f} {r['cpu_ratio']:>6.2f} "
            f"{p['settle_s']:>6.1f} {p['lag_max_before_ms']:>7.0f}  "
            f"{'ok' if r['ok'] else 'MISSED ' + ','.join(k for k, v in r['targets_met'].items() if not v)}")


# The fan-out -----------------------------------------------------------------------------------------------
def fanout_scenario(watchers: int, folder: Path) -> Path:
    """:data:`FANOUT_SCENARIO` with its number of sessions for ``watchers`` (see :data:`FANOUT_SESSION_WATCHERS`)."""
    sessions = max(1, min(100, round(FANOUT_SESSION_WATCHERS / watchers)))
    path = folder / f"fanout_{sessions}.yaml"
    text = FANOUT_SCENARIO.read_text()
    if "count: 100}" not in text:
        raise RuntimeError(f"{FANOUT_SCENARIO}: no 'count: 100}}' to set the number of sessions in")
    path.write_text(text.replace("count: 100}", f"count: {sessions}}}"))
    return path


def fanout(watchers: int, speed: float, seconds: float, warmup: float, workers: int,
           profile: Path | None = None, scenario: str | Path = FANOUT_SCENARIO) -> dict[str, Any]:
    """``pipesim serve`` with ``watchers`` clients each watching every session, then the bare server
    broadcasting a message of the same mean size to as many clients at the rate each pipesim client got, then
    the server again with nobody watching."""
    spread = max(1, min(workers, watchers))
    live = run_pipesim(0, speed, watchers, seconds, warmup, workers, profile, scenario=scenario,
                       dashboard_workers=spread)
    bare = run_bare(0, watchers, seconds, min(warmup, 2.0), workers, round(live["mean_bytes"]), 0.0,
                    live["msgs_per_s"] / watchers, dashboard_workers=spread, parse=True)
    # The same server with nobody watching: the model, the encoder and the journal (same seed, same messages).
    alone = Serve(speed, scenario=scenario)
    try:
        time.sleep(warmup)
        start = cpu_seconds(alone.pid)
        time.sleep(seconds)
        end = cpu_seconds(alone.pid)
    finally:
        alone.stop()
    model_us = 1e6 * (sum(end) - sum(start)) / seconds / max(live["msgs_per_s"], 1e-9)
    ratio = live["cpu_per_msg_us"] / max(bare["cpu_per_msg_us"], 1e-9)
    lost = live["lost"] + live["slow"] + live["server_slow_disconnects"] + bare["slow"]
    return {"watchers": watchers, "speed": speed, "pipesim": live, "bare": bare, "cpu_ratio": ratio,
            "model_us_per_msg": model_us,
            "fanout_ratio": (live["cpu_per_msg_us"] - model_us) / max(bare["cpu_per_msg_us"], 1e-9),
            "behind": live["settle_s"] >= SETTLE_LIMIT_S, "ok": ratio <= TARGETS["fanout_cpu_ratio"] and lost == 0}


def fanout_row(r: dict[str, Any]) -> str:
    p, b = r["pipesim"], r["bare"]
    return (f"{r['watchers']:>8} {r['speed']:>6g} {p['msgs_per_s']:>9.0f} {b['msgs_per_s']:>9.0f} "
            f"{p['mean_bytes']:>6.0f} {p['cpu_per_msg_us']:>8.2f} {b['cpu_per_msg_us']:>8.2f} {r['cpu_ratio']:>6.2f} "
            f"{r['model_us_per_msg']:>8.2f} {r['fanout_ratio']:>6.2f} {p['lost']:>5} "
            f"{p['slow'] + p['server_slow_disconnects']:>5} {p['p99_ms']:>7.1f} {p['lag_p99_ms']:>7.1f} "
            f"{p['settle_s']:>6.1f}  "
            f"{'ok' if r['ok'] else 'MISSED'}{' (behind)' if r['behind'] else ''}")


FANOUT_HEADER = (f"{'watchers':>8} {'speed':>6} {'msg/s':>9} {'bare/s':>9} {'bytes':>6} {'us/msg':>8} {'bare us':>8} "
                 f"{'ratio':>6} {'model us':>8} {'hub':>6} {'lost':>5} {'slow':>5} {'p99 ms':>7} {'lag99':>7} "
                 f"{'settle':>6}")

HEADER = (f"{'N':>6} {'speed':>6} {'msg/s':>9} {'bare/s':>9} {'bytes':>6} {'lost':>5} {'slow':>5} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'lag99':>7} {'us/msg':>8} {'bare us':>8} {'ratio':>6} {'settle':>6} "
          f"{'ramp ms':>7}")


# The soak ------------------------------------------------------------------------------------------------
async def _churn(url: str, concurrent: int, lifetime_s: float, speed: float, until: float,
                 dialect: str = "ws") -> int:
    """Keep ``concurrent`` sessions alive, each stopped ``lifetime_s`` simulated seconds after its start
    and replaced by a new one; a connection per control (connection churn too). Returns sessions started.
    ``dialect`` ``rtvi``: a session is one ``/rtvi`` socket instead (``client-ready``, a ``client-message``,
    the bot's messages read for ``lifetime_s``, ``disconnect-bot``, read to the server's close)."""
    started = 0

    async def read(ws: Any, seconds: float) -> None:  # what the server sends, for ``seconds`` or to its close
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for _ in ws:
                    pass

    async def rtvi_session() -> None:
        async with connect(url.removesuffix("/ws") + "/rtvi", max_size=None, ping_interval=None) as ws:
            for type_, data in (("client-ready", {"version": "2.1.0"}), ("client-message", {"t": "soak"})):
                await ws.send(encode_message({"label": "rtvi-ai", "type": type_, "id": type_, "data": data}))
            await read(ws, lifetime_s / speed)
            await ws.send(encode_message({"label": "rtvi-ai", "type": "disconnect-bot", "id": "bye", "data": {}}))
            await read(ws, 2.0)

    async def control(sid: str, action: str) -> None:
        async with connect(f"{url}?session_id={sid}", max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "conversation_control", "action": action, "session_id": sid}))
            await read(ws, 0.2)

    async def lane(k: int) -> None:
        nonlocal started
        await asyncio.sleep(k * lifetime_s / concurrent / speed)  # staggered
        i = 0
        while time.monotonic() < until:
            if dialect == "rtvi":
                started += 1
                await rtvi_session()
                continue
            sid = f"soak-{k}-{i}"
            await control(sid, "start")
            started += 1
            await asyncio.sleep(lifetime_s / speed)
            await control(sid, "stop")
            i += 1

    await asyncio.gather(*(lane(k) for k in range(concurrent)))
    return started


def soak(speed: float, sim_minutes: float, concurrent: int, lifetime_s: float, trace_limit: int,
         forget_after: float | None, dialect: str = "ws") -> dict[str, Any]:
    """Sessions starting and stopping at high speed for ``sim_minutes`` of simulated time; RSS sampled
    every wall second against the server's simulated clock; the slope in MB per simulated hour over the
    second half (the first is warm-up: the first sessions, allocator pools). ``dialect``: see :func:`_churn`."""
    extra = ["--forget-after", str(forget_after if forget_after is not None else 1e12),
             "--trace-limit", str(trace_limit)]
    server = Serve(speed, extra)
    samples: list[tuple[float, float]] = []
    until = time.monotonic() + sim_minutes * 60 / speed
    try:
        ctx = mp.get_context("fork")
        churn = ctx.Process(target=lambda: asyncio.run(_churn(server.url, concurrent, lifetime_s, speed, until,
                                                                   dialect)),
                            daemon=True)
        churn.start()
        while time.monotonic() < until + 1:
            stats = server.stats()
            samples.append((stats["clock"]["sim_now"], rss_mb(server.pid)))
            time.sleep(1.0)
        churn.join(30)
        final = server.stats()
    finally:
        server.stop()
    t, rss = np.array(samples).T
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 3600, rss[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return {"dialect": dialect,
            "speed": speed, "sim_minutes": float(t[-1] / 60), "trace_limit": trace_limit, "forget_after": forget_after,
            "concurrent": concurrent, "lifetime_s": lifetime_s, "sessions_kept": final["sessions"],
            "forgotten": final["forgotten"], "server_gc": final.get("gc"),
            "rss_start_mb": float(rss[0]), "rss_end_mb": float(rss[-1]),
            "slope_mb_per_sim_hour": slope, "samples": samples}


# Bot audio ---------------------------------------------------------------------------------------------------
async def _rtvi_listeners(url: str, sessions: int, window: tuple[float, float]) -> dict[str, Any]:
    """``sessions`` RTVI sockets (``client-ready``, then reading everything, as a frontend does); what
    arrived in the wall-clock ``window`` (``time.monotonic``, shared with the parent process)."""
    tally = {"frames": 0, "audio_frames": 0, "wire_bytes": 0, "audio_bytes": 0, "closed_early": 0}

    async def one(k: int) -> None:
        await asyncio.sleep(k * 0.01)  # no thundering herd of handshakes
        try:
            async with connect(url, max_size=None, ping_interval=None, open_timeout=60) as ws:
                await ws.send(encode_message({"label": "rtvi-ai", "type": "client-ready", "id": str(k), "data": {}}))
                while (now := time.monotonic()) < window[1]:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(window[1] - now):
                            raw = await ws.recv()
                            if window[0] <= time.monotonic() < window[1]:
                                frame = decode_frame(raw)
                                tally["frames"] += 1
                                # /rtvi negotiates no compression: a frame is its bytes and its header.
                                size = len(raw)
                                tally["wire_bytes"] += size + (2 if size < 126 else 4 if size < 2**16 else 10)
                                if frame.kind == "audio":
                                    tally["audio_frames"] += 1
                                    tally["audio_bytes"] += frame.audio_bytes
        except websockets.ConnectionClosed:
            tally["closed_early"] += 1

    await asyncio.gather(*(one(k) for k in range(sessions)))
    return tally


def _rtvi_run(sessions: int, speed: float, seconds: float, warmup: float, with_audio: bool) -> dict[str, Any]:
    server = Serve(speed, [] if with_audio else ["--no-bot-audio"])
    url = server.url.removesuffix("/ws") + "/rtvi"
    window = (time.monotonic() + warmup, time.monotonic() + warmup + seconds)
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    clients = ctx.Process(target=lambda: results.put(asyncio.run(_rtvi_listeners(url, sessions, window))),
                          daemon=True)
    clients.start()
    try:
        time.sleep(max(0.0, window[0] - time.monotonic()))
        cpu0 = cpu_seconds(server.pid)
        time.sleep(max(0.0, window[1] - time.monotonic()))
        cpu1 = cpu_seconds(server.pid)
        tally = results.get(timeout=60)
        clients.join(10)
    finally:
        err = server.stop()
    cpu = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
    out = {"bot_audio": with_audio, "sessions": sessions, "speed": speed, "seconds": seconds, **tally,
           "cpu_s": cpu, "cpu_sys_s": cpu1[1] - cpu0[1], "cpu_ms_per_session_s": 1000 * cpu / seconds / sessions,
           "frames_per_session_s": tally["frames"] / seconds / sessions,
           "wire_bytes_per_session_s": tally["wire_bytes"] / seconds / sessions,
           "audio_bytes_per_session_s": tally["audio_bytes"] / seconds / sessions,
           "speaking_share": tally["audio_frames"] * FRAME_S / seconds / sessions}
    if "Traceback" in err:
        out["server_stderr"] = err[-2000:]
    return out


def bot_audio(sessions: int, speed: float, seconds: float, warmup: float, rounds: int) -> dict[str, Any]:
    """RTVI sessions (``/rtvi``, each a socket reading everything) on ``pipesim serve``, without and with the
    bot's audio, in alternate rounds: server CPU per session (ms per wall second), frames and bytes per
    session per wall second (WebSocket frames with their headers; the PCM alone), and the share of the time
    the bot spoke. Target: CPU per session with audio at most 2x without."""
    runs = [_rtvi_run(sessions, speed, seconds, warmup, with_audio)
            for _ in range(rounds) for with_audio in (False, True)]
    without = float(np.median([r["cpu_ms_per_session_s"] for r in runs if not r["bot_audio"]]))
    with_ = float(np.median([r["cpu_ms_per_session_s"] for r in runs if r["bot_audio"]]))
    return {"runs": runs, "cpu_ratio": with_ / without, "target": 2.0, "ok": with_ / without <= 2.0}


def bot_audio_table(result: dict[str, Any]) -> str:
    lines = [f"{'audio':>5} {'N':>5} {'speed':>5} {'CPU ms/s':>8} {'frames/s':>8} {'KB/s':>6} {'PCM KB/s':>8} "
             f"{'speaking':>8} {'closed':>6}   (per session)"]
    for r in result["runs"]:
        lines.append(f"{'yes' if r['bot_audio'] else 'no':>5} {r['sessions']:>5} {r['speed']:>5g} "
                     f"{r['cpu_ms_per_session_s']:>8.2f} {r['frames_per_session_s']:>8.1f} "
                     f"{r['wire_bytes_per_session_s'] / 1000:>6.2f} {r['audio_bytes_per_session_s'] / 1000:>8.2f} "
                     f"{r['speaking_share']:>8.0%} {r['closed_early']:>6}")
    lines.append(f"CPU per session, with / without bot audio (medians): {result['cpu_ratio']:.2f} "
                 f"(target <= {result['target']:g}: {'met' if result['ok'] else 'MISSED'})")
    return "\n".join(lines)


# Main ------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {"nproc": os.cpu_count(), "mem_gb": round(int(mem) / 2**20, 1), "python": platform.python_version(),
            "websockets": websockets.__version__, "fd_limit": raise_fd_limit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 10 sessions, a few seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--dashboards", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window, wall seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="wall seconds between connect and window")
    parser.add_argument("--workers", type=int, default=4, help="session client processes (plus one per dashboard)")
    parser.add_argument("--no-ramp", action="store_true", help="skip the speed ramp at the largest size")
    parser.add_argument("--max-speed", type=float, default=64.0)
    parser.add_argument("--profile", type=Path, help="py-spy profile of the server at the largest size: a flame "
                        "graph (.svg) or collapsed stacks (.txt)")
    parser.add_argument("--fanout", type=int, nargs="+", metavar="W",
                        help="the fan-out instead: W clients watching every session, e.g. 1 50 200")
    parser.add_argument("--fanout-speed", type=float, default=10.0, help="the fan-out's --speed")
    parser.add_argument("--fanout-scenario", help="the fan-out's scenario at every size (default: "
                        f"benchmarks/fanout_bench.yaml with {FANOUT_SESSION_WATCHERS}/W sessions, 100 at most)")
    parser.add_argument("--soak", action="store_true", help="the memory soak instead")
    parser.add_argument("--soak-speed", type=float, default=60.0)
    parser.add_argument("--soak-minutes", type=float, default=40.0, help="simulated minutes")
    parser.add_argument("--soak-dialect", choices=("ws", "rtvi"), default="ws",
                        help="what the soak churns: seed sessions on /ws, or RTVI sockets on /rtvi")
    parser.add_argument("--bot-audio", action="store_true", help="RTVI sessions with and without bot audio instead")
    parser.add_argument("--audio-sessions", type=int, default=50, help="RTVI sessions for --bot-audio")
    parser.add_argument("--audio-rounds", type=int, default=2, help="rounds of (without, with) for --bot-audio")
    parser.add_argument("--soak-trace-limit", type=int, default=200_000,
                        help="the server's --trace-limit in the soak (smaller: the ring fills sooner)")
    args = parser.parse_args()
    info = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.soak:
        # As served (a bounded trace, forgetting); then without each bound, to show what each one holds.
        runs = [soak(args.soak_speed, args.soak_minutes, 20, 120.0, limit, forget, args.soak_dialect)
                for limit, forget in ((args.soak_trace_limit, 60.0), (0, 60.0), (args.soak_trace_limit, None))]
        print(f"{'trace':>7} {'forget':>7} {'sim min':>8} {'kept':>5} {'forgot':>6} {'RSS0 MB':>8} {'RSS1 MB':>8} "
              f"{'MB/sim h':>9}")
        for r in runs:
            print(f"{r['trace_limit'] or 'all'!s:>7} {r['forget_after'] or 'never'!s:>7} {r['sim_minutes']:>8.1f} "
                  f"{r['sessions_kept']:>5} {r['forgotten']:>6} {r['rss_start_mb']:>8.1f} {r['rss_end_mb']:>8.1f} "
                  f"{r['slope_mb_per_sim_hour']:>9.2f}")
        soaked = {"benchmark": "live_soak", "machine": info, "runs": runs}
        (OUT / "live_soak.json").write_text(json.dumps(soaked, indent=1))
        return
    if args.bot_audio:
        result = bot_audio(args.audio_sessions, args.speed, args.seconds, args.warmup, args.audio_rounds)
        print(bot_audio_table(result))
        (OUT / "live_bot_audio.json").write_text(json.dumps({"benchmark": "live_bot_audio", "machine": info,
                                                              **result}, indent=1))
        return
    if args.fanout:
        print(FANOUT_HEADER, flush=True)
        fanned = []
        for w in args.fanout:
            profile = args.profile if w == max(args.fanout) else None
            with tempfile.TemporaryDirectory() as folder:
                scenario = args.fanout_scenario or fanout_scenario(w, Path(folder))
                fanned.append(fanout(w, args.fanout_speed, args.seconds, args.warmup, args.workers, profile,
                                     scenario))
            print(fanout_row(fanned[-1]), flush=True)
        (OUT / "live_fanout.json").write_text(json.dumps({"benchmark": "live_fanout", "machine": info,
                                                          "targets": TARGETS, "results": fanned}, indent=1))
        return
    if args.quick:
        args.sizes, args.seconds, args.warmup, args.workers, args.dashboards, args.no_ramp = [10], 3.0, 1.5, 1, 1, True
    results, ramp = [], []
    print(HEADER, flush=True)
    for n in args.sizes:
        profile = args.profile if n == max(args.sizes) else None
        results.append(measure(n, args.speed, args.dashboards, args.seconds, args.warmup, args.workers, profile))
        print(row(results[-1]), flush=True)
    if not args.no_ramp:
        speed = args.speed
        while speed < args.max_speed:
            speed *= 2
            ramp.append(measure(max(args.sizes), speed, args.dashboards, args.seconds, args.warmup, args.workers))
            print(row(ramp[-1]), flush=True)
            if not ramp[-1]["ok"]:
                break
    sustained = max([args.speed] + [r["speed"] for r in ramp if r["ok"]]) if results and results[-1]["ok"] else None
    print(f"highest speed sustained at {max(args.sizes)} sessions: {sustained}")
    (OUT / "live.json").write_text(json.dumps({"benchmark": "live", "machine": info, "targets": TARGETS,
                                               "results": results, "ramp": ramp, "sustained_speed": sustained},
                                              indent=1))
    if args.quick:  # the smoke test: messages flowed, none lost; nothing about speed
        live = results[0]["pipesim"]
        assert live["messages"] > 0 and results[0]["bare"]["messages"] > 0, results[0]
        assert live["lost"] == 0 and live["slow"] == 0, results[0]


if __name__ == "__main__":
    main()
