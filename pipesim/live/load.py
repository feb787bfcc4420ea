"""``pipesim load``: a bounded load test of a ``pipesim serve``, the one load generator (the live benchmark,
``benchmarks/bench_live.py``, uses it too).

N session clients, spread over worker processes (asyncio + ``websockets`` each, 50 handshakes at a time),
each connect with ``?session_id=`` and start and watch their own session; D dashboard clients (a process
each: every one receives as much as all the session clients together) watch everything. After a warm-up,
and once the server has caught up with the wall clock (a burst of connections can set it back: at 1,000
sessions, a full garbage collection of ~0.3 s and seconds of catching up on a 2-core machine), a
measurement window of fixed wall length; then each client stops its session and disconnects.

Figures of the window: delivered messages/s; messages lost (``seq`` gaps) by clients that kept up;
clients the server disconnected as too slow (close code 1013) and others that dropped; p50/p99 latency
from each transition's simulated time, mapped to wall time by the clock origin the server publishes on
``GET /stats``, to receipt; the pacer's lag p99 (the histogram on ``/stats``, read before and after).

>>> http_base("ws://127.0.0.1:8001/ws")
'http://127.0.0.1:8001'
>>> http_base("http://127.0.0.1:8001/ws")
Traceback (most recent call last):
...
pipesim.errors.LiveError: http://127.0.0.1:8001/ws: not a WebSocket URL (expected ws://HOST:PORT/ws or wss://...)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing as mp
import os
import queue
import resource
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.asyncio.client import connect

from pipesim import _jsonsafe
from pipesim.errors import LiveError
from pipesim.live.client import split_websocket_url
from pipesim.live.collector import ServingCollector
from pipesim.live.connection import CLOSE_SLOW
from pipesim.live.lag import LagHistogram

#: Handshakes started at once in each worker (a burst of thousands would be refused by the backlog).
HANDSHAKE_BATCH = 50
#: The window starts once the server is less than this far behind the wall clock (``/stats`` ``behind_s``)...
CAUGHT_UP_S = 0.01
#: ... or after this many seconds past the warm-up in any case (a load it cannot sustain: its lag says so).
SETTLE_LIMIT_S = 30.0


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def http_base(url: str) -> str:
    """The HTTP address of the server of WebSocket ``url`` (where ``/stats`` is)."""
    parts = split_websocket_url(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


def server_stats(url: str, timeout: float = 60.0) -> dict[str, Any]:
    """``GET /stats`` of the server of ``url``; a :class:`~pipesim.errors.LiveError` naming why if it fails."""
    address = f"{http_base(url)}/stats"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            stats = _jsonsafe.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise LiveError(f"{address}: HTTP {exc.code}: not a pipesim serve (the load test reads its "
                        "clock and pacer lag there)") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise LiveError(f"cannot connect to {url}: {reason}") from None
    except (TimeoutError, OSError) as exc:
        raise LiveError(f"cannot connect to {url}: {exc}") from None
    except ValueError:
        raise LiveError(f"{address}: not JSON: not a pipesim serve") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("clock"), dict) or "pacer_lag" not in stats:
        raise LiveError(f"{address}: no clock or pacer_lag: not a live pipesim serve (a replay cannot be "
                        "load-tested: it takes no controls)")
    return stats


def lag_p99_ms(before: dict[str, Any], after: dict[str, Any]) -> float:
    """The pacer's lag p99 (ms) between two readings of ``/stats``'s ``pacer_lag``."""
    return LagHistogram.from_dict(after).since(before).quantile(0.99) * 1000


# The clients (in worker processes) -----------------------------------------------------------------------
def _client_process(url: str, sids: list[str | None], clock: dict[str, float] | None, window: Any,
                    ready: Any, results: Any, token: str | None) -> None:
    raise_fd_limit()
    tally = asyncio.run(_clients(url, sids, clock, window, ready, token))
    results.put({**tally, "dashboards": sids[0] is None})


async def _clients(url: str, sids: list[str | None], clock: dict[str, float] | None, window: Any,
                   ready: Any, token: str | None) -> dict[str, Any]:
    """Connect (a batch at a time), start each session, count what arrives in the window; then stop."""
    tally: dict[str, Any] = {"messages": 0, "bytes": 0, "lost": 0, "slow": 0, "broken": 0, "refused": 0,
                             "refusal": None, "latency_ms": []}
    connected = asyncio.Event()
    pending = [len(sids)]

    def settled() -> None:  # this client connected, or never will
        pending[0] -= 1
        if not pending[0]:
            connected.set()

    headers = {"Authorization": f"Bearer {token}"} if token else None

    async def one(sid: str | None) -> None:
        target = url if sid is None else f"{url}?session_id={sid}"
        try:
            ws = await connect(target, max_size=None, open_timeout=60, ping_interval=None, additional_headers=headers)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            tally["refused"] += 1
            tally["refusal"] = tally["refusal"] or _refusal(exc)
            settled()
            return
        started = False
        try:
            async with ws:
                control = {"type": "conversation_control", "session_id": sid}
                if sid is not None and clock is not None:
                    await ws.send(json.dumps({**control, "action": "start"}))
                started = True
                settled()
                await receive(ws)
                if sid is not None and clock is not None:  # leave the server as we found it
                    await ws.send(json.dumps({**control, "action": "stop"}))
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_SLOW:
                tally["slow"] += 1
            elif window[1] == 0 or time.monotonic() < window[1]:
                tally["broken"] += 1
        finally:
            if not started:  # closed before its start went out: do not keep the others waiting for it
                settled()

    async def receive(ws: Any) -> None:
        last: dict[str, int] = {}
        lat = tally["latency_ms"]
        while True:
            t1 = window[1]
            now = time.monotonic()
            if t1 and now > t1 + 0.3:
                return
            try:
                async with asyncio.timeout(0.5):
                    text = await ws.recv()
            except TimeoutError:
                continue
            now = time.monotonic()
            t0 = window[0]
            inside = t0 and t0 <= now <= window[1]
            if inside:
                tally["messages"] += 1
                tally["bytes"] += len(text)
            if clock is None:  # a bare server's filler (the benchmark): nothing to check
                continue
            m = _jsonsafe.loads(text)
            sid, seq = m.get("session_id"), m.get("seq")
            if sid is None or seq is None:
                continue
            previous = last.get(sid)
            if previous is None:  # a session's first message: its creation, or the snapshot on connect
                opening = m["type"] == "session_created" or m.get("event") == "snapshot"
                tally["lost"] += 0 if opening else seq
            elif seq <= previous:
                continue  # a snapshot repeats the last seq
            else:
                tally["lost"] += seq - previous - 1
            last[sid] = seq
            if inside and m.get("event") != "snapshot":
                due = clock["origin"] + (m["timestamp"] - clock["origin_sim"]) / clock["speed"]
                lat.append((clock["now"]() - due) * 1000)

    if clock is not None:  # the server's clock origin, on the clock it was published in
        clock = {**clock, "now": time.monotonic if "origin_monotonic" in clock else time.time,
                 "origin": clock.get("origin_monotonic", clock.get("origin_unix"))}
    tasks = []
    for i in range(0, len(sids), HANDSHAKE_BATCH):
        batch = [asyncio.ensure_future(one(sid)) for sid in sids[i:i + HANDSHAKE_BATCH]]
        tasks += batch
        await asyncio.wait(batch, timeout=0.2)  # let the handshakes of this batch go through first
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(120):
            await connected.wait()
    collector = ServingCollector()  # this worker process is ours: its own full collections would read as latency
    collector.start()
    try:
        ready.put(len(sids) - pending[0] - tally["refused"])
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        collector.stop()
    tally["latency_ms"] = np.asarray(tally["latency_ms"], dtype=np.float32)
    return tally


def run_clients(url: str, sessions: int, dashboards: int, seconds: float, warmup: float, workers: int,
                clock: dict[str, float] | None, on_window: Callable[[], Any] | None = None,
                token: str | None = None, caught_up: Callable[[], bool] | None = None,
                dashboard_workers: int | None = None) -> dict[str, Any]:
    """N session clients and D dashboards in ``workers`` + D processes; the tallies of the window, summed.

    ``dashboard_workers``: the dashboards spread over that many processes instead of one each (many
    watchers of everything, as the benchmark's fan-out has, would otherwise be a process each).

    ``clock`` is ``/stats``'s ``clock`` (None for a server that is not pipesim: then nothing but counts);
    ``on_window`` is called at the start and at the end of the window, its results returned as ``window``;
    after the warm-up the window waits (at most :data:`SETTLE_LIMIT_S`) until ``caught_up()`` is true. The
    result's ``settle_s`` is that wait.
    """
    ctx = mp.get_context("fork")
    window = ctx.Array("d", 2, lock=False)
    ready, results = ctx.Queue(), ctx.Queue()
    tag = "bare" if clock is None else "load"
    sids: list[str | None] = [f"{tag}-{os.getpid()}-{i}" for i in range(sessions)]
    if clock is not None and "origin_monotonic" in clock and not _loopback(url):
        # monotonic clocks of two machines have nothing in common; wall clocks at least roughly agree
        clock = {k: v for k, v in clock.items() if k != "origin_monotonic"}
    watchers: list[str | None] = [None] * dashboards
    spread = dashboard_workers or dashboards
    groups = [sids[w::workers] for w in range(workers)] + [watchers[w::spread] for w in range(spread)]
    groups = [g for g in groups if g]
    procs = [ctx.Process(target=_client_process, args=(url, g, clock, window, ready, results, token),
                         daemon=True)
             for g in groups]
    for p in procs:
        p.start()
    try:
        connected = sum(ready.get(timeout=180) for _ in procs)
        time.sleep(warmup)
        settle_start = time.monotonic()
        while caught_up is not None and not caught_up() and time.monotonic() - settle_start < SETTLE_LIMIT_S:
            time.sleep(0.1)
        t0 = time.monotonic()
        window[0], window[1] = t0, t0 + seconds  # the clients count what they receive from now on
        settle_s = t0 - settle_start
        start = on_window() if on_window else None
        time.sleep(max(0.0, window[1] - time.monotonic()))
        end = on_window() if on_window else None
        tallies = [results.get(timeout=120) for _ in procs]
    except queue.Empty:
        raise LiveError(f"{url}: a client process did not report within its time limit") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    latency = np.concatenate([t["latency_ms"] for t in tallies]) if tallies else np.zeros(0)
    total = {k: sum(t[k] for t in tallies) for k in ("messages", "bytes", "lost", "slow", "broken", "refused")}
    dash_messages = sum(t["messages"] for t in tallies if t["dashboards"])
    return {**total, "connected": connected, "clients": sessions + dashboards, "seconds": seconds,
            "refusal": next((t["refusal"] for t in tallies if t["refusal"]), None), "settle_s": settle_s,
            "msgs_per_s": total["messages"] / seconds, "dashboard_msgs_per_s": dash_messages / seconds,
            "mean_bytes": total["bytes"] / max(total["messages"], 1),
            "p50_ms": float(np.percentile(latency, 50)) if latency.size else float("nan"),
            "p99_ms": float(np.percentile(latency, 99)) if latency.size else float("nan"),
            "window": (start, end)}


def _refusal(exc: Exception) -> str:
    """Why a connection failed, in the server's words where it gave any (a 403's body: "wrong token")."""
    if isinstance(exc, websockets.InvalidStatus):
        body = exc.response.body.decode("utf-8", "replace").strip()
        return f"HTTP {exc.response.status_code}" + (f": {body}" if body else "")
    return f"{type(exc).__name__}: {exc}"


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_load(url: str, sessions: int = 100, dashboards: int = 2, seconds: float = 10.0, warmup: float = 2.0,
             workers: int = 4, on_window: Callable[[], Any] | None = None, token: str | None = None,
             dashboard_workers: int | None = None) -> dict[str, Any]:
    """Load-test the ``pipesim serve`` at ``url`` (see the module docstring); the figures of the window.

    ``token``: sent as ``Authorization: Bearer TOKEN`` (a server started with ``--token``);
    ``dashboard_workers``: see :func:`run_clients`.

    ``on_window`` (the benchmark's CPU readings) is called at the window's start and end, its results are
    returned under ``window``. Raises :class:`~pipesim.errors.LiveError` when the server cannot be reached
    or refuses every connection.
    """
    stats = server_stats(url)

    def reading() -> dict[str, Any]:
        return {"stats": server_stats(url), "extra": on_window() if on_window else None}

    def caught_up() -> bool:
        return server_stats(url)["clock"].get("behind_s", 0.0) < CAUGHT_UP_S

    out = run_clients(url, sessions, dashboards, seconds, warmup, workers, stats["clock"], on_window=reading,
                      token=token, caught_up=caught_up, dashboard_workers=dashboard_workers)
    if out["connected"] == 0:
        raise LiveError(f"{url}: no client could connect ({out['refusal']})")
    start, end = out.pop("window")
    out["window"] = (start["extra"], end["extra"])
    out["lag_p99_ms"] = lag_p99_ms(start["stats"]["pacer_lag"], end["stats"]["pacer_lag"])
    out["lag_max_before_ms"] = start["stats"]["pacer_lag"].get("max_ms", 0.0)  # the ramp's worst moment
    out["server_slow_disconnects"] = end["stats"]["slow_disconnects"] - start["stats"]["slow_disconnects"]
    out["pacer_errors"] = end["stats"]["pacer_errors"]
    before, after = start["stats"].get("gc"), end["stats"].get("gc")  # None: the server's host owns its collector
    out["server_gc"] = None if before is None or after is None else {
        "full_collections": after["full_collections"] - before["full_collections"],
        "ticks": after["ticks"] - before["ticks"], "full_ms": after["full_ms_total"] - before["full_ms_total"],
        "max_full_ms": after["max_full_ms"]}
    out.update(url=url, sessions=sessions, dashboards=dashboards, workers=workers, warmup=warmup,
               speed=end["stats"]["clock"]["speed"])
    return out


# The command ----------------------------------------------------------------------------------------------
def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def report(out: dict[str, Any]) -> str:
    """The figures of :func:`run_load`, for people."""
    lines = [
        f"connected    {out['connected']} of {out['clients']} clients ({out['sessions']} sessions, "
        f"{_count(out['dashboards'], 'dashboard')}), server at {out['speed']:g}x",
        f"delivered    {out['msgs_per_s']:,.0f} messages/s over {out['seconds']:g} s "
        f"(dashboards {out['dashboard_msgs_per_s']:,.0f}/s), {out['mean_bytes']:.0f} bytes each",
        f"lost         {out['lost']} (seq gaps seen by clients that kept up)",
        f"disconnected {out['slow']} as too slow, {out['broken']} otherwise",
        f"latency      p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms (transition to receipt)",
        f"pacer lag    p99 {out['lag_p99_ms']:.1f} ms (before the window: at worst "
        f"{out['lag_max_before_ms']:.0f} ms; the window began {out['settle_s']:.1f} s after the warm-up, "
        f"once the server had caught up)"]
    gc = out.get("server_gc")
    if gc is not None:
        lines.append(f"server gc    {_count(gc['full_collections'], 'full collection')} in the window "
                     f"({gc['full_ms']:.0f} ms); the longest so far {gc['max_full_ms']:.0f} ms")
    return "\n".join(lines)


def load_command(args: argparse.Namespace) -> int:
    """``pipesim load [URL] [--sessions] [--dashboards] [--duration] [--warmup] [--workers] [--token] [--json FILE]``:
    exit 0, or 1 when messages were lost or clients were disconnected."""
    limit = raise_fd_limit()
    if args.sessions + args.dashboards + 64 > limit:
        raise LiveError(f"--sessions {args.sessions}: more connections than this process may open "
                        f"(open-file limit {limit}; raise it with ulimit -n)")
    workers = max(1, min(args.workers, args.sessions))
    server_stats(args.url)  # a bad URL or no server: one line, before anything starts
    print(f"pipesim load: {_count(args.sessions, 'session')} + {_count(args.dashboards, 'dashboard')} on {args.url} "
          f"({_count(workers, 'worker process', 'worker processes')}), {args.warmup:g} s warm-up, "
          f"{args.duration:g} s window", flush=True)
    out = run_load(args.url, args.sessions, args.dashboards, args.duration, args.warmup, workers,
                   token=args.token or os.environ.get("PIPESIM_TOKEN") or None)
    out.pop("window")
    print(report(out), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if out["lost"] or out["slow"] or out["broken"] or out["refused"] else 0
