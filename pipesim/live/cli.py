"""``pipesim serve`` and ``pipesim replay``: run a live or replay server until SIGINT/SIGTERM.

Both print one line once listening, on standard output and flushed at once, a JSON object that a test
harness can read (``--port 0`` and ``--admin-port 0`` take free ports, so parallel workers each start
their own)::

    {"event":"listening","ws":"ws://127.0.0.1:PORT/ws","http":"http://127.0.0.1:PORT/","port":PORT,
     "admin":"http://127.0.0.1:APORT/__admin","admin_port":APORT,"pid":PID}

(``admin`` and ``admin_port`` are null with ``--no-admin``; with TLS the URLs are ``wss://`` and ``https://``),
then a line for people on standard error (with TLS, also where the certificate is and how to trust it).
They stop cleanly on SIGINT or SIGTERM (clients get
close code 1001, the recording is complete) and exit 0. A user mistake (bad scenario or replay file,
port in use, recording not writable) raises a :class:`~pipesim.errors.PipesimError`, which
:func:`pipesim.cli.main` prints as ``pipesim: error: ...`` (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from typing import TextIO

from pipesim.live.collector import ServingCollector
from pipesim.live.connection import RTVI_PATH
from pipesim.live.liveserver import LiveServer
from pipesim.live.options import ServerOptions
from pipesim.live.recording import load_replay
from pipesim.live.replay import ReplayServer
from pipesim.live.server import BaseServer
from pipesim.scenario import load_scenario


def serve(args: argparse.Namespace) -> int:
    """``pipesim serve [SCENARIO] [--host] [--port] [--speed] [--seed] [--record] [--owner-only]
    [--allow-origin] [--allow-host] [--token] [--forget-after] [--trace-limit] [--no-bot-audio]``."""
    scenario = load_scenario(args.scenario)
    server = LiveServer(scenario, speed=args.speed, seed=args.seed, owner_only=args.owner_only,
                        forget_after=args.forget_after, trace_limit=args.trace_limit or None,
                        bot_audio=not args.no_bot_audio, options=ServerOptions.from_args(args))
    what = f"scenario {scenario.name} (seed {server.sim.seed})"
    return _run(server, what)


def replay(args: argparse.Namespace) -> int:
    """``pipesim replay FILE [--host] [--port] [--speed] [--loop] [--allow-origin] [--allow-host] [--token]``."""
    options = ServerOptions.from_args(args)  # a mistake there is said before a long load
    with LoadingReport(args.file) as report:
        items = load_replay(args.file, progress=report)
    server = ReplayServer(items, speed=args.speed, loop=args.loop, options=options)
    server.source = args.file
    what = f"replay of {args.file} ({len(items)} messages{', looping' if args.loop else ''})"
    return _run(server, what)


class LoadingReport:
    """Tells a person on standard error what is being loaded and how far it is, once it takes more than a
    second (one line rewritten in place on a terminal, a line every 2 s otherwise). A quick load says
    nothing: a bad file is still one line, the error.

    >>> import io
    >>> with LoadingReport("run/", stream=io.StringIO()) as report:
    ...     report(0.5)                       # within the first second: nothing is said
    >>> report.stream.getvalue()
    ''
    """

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what, self.stream = what, stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty()
        self.started, self.shown = time.monotonic(), -math.inf
        self._rewriting = False  # a progress line is on the terminal, without its newline

    def __enter__(self) -> LoadingReport:
        return self

    def __call__(self, fraction: float | None) -> None:
        now = time.monotonic()
        if now - self.started < 1.0 or now - self.shown < (0.25 if self.terminal else 2.0):
            return
        self.shown = now
        done = f"{fraction:.0%}" if fraction is not None else "reading"
        line = f"pipesim: loading {self.what}: {done} ({now - self.started:.0f} s)"
        if self.terminal:
            self.stream.write(f"\r{line}\x1b[K")
            self._rewriting = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self._rewriting:  # what follows (the serving line, an error, "interrupted") starts a line of its own
            self.stream.write("\n")
            self.stream.flush()


def listening_line(server: BaseServer) -> str:
    """The machine-readable first line of ``pipesim serve``/``replay`` (see the module docstring)."""
    admin = server.admin
    return json.dumps({"event": "listening", "ws": server.url, "http": server.http_url, "port": server.port,
                       "admin": server.admin_url, "admin_port": admin.port if admin is not None else None,
                       "pid": os.getpid()}, separators=(",", ":"))


def _run(server: BaseServer, what: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="pipesim: %(levelname)s: %(message)s")
    speed = getattr(server, "speed", 1.0)
    asyncio.run(_main(server, what, speed))
    return 0


async def _main(server: BaseServer, what: str, speed: float) -> None:
    await server.start()
    server.collector = ServingCollector()  # this process serves: no full collection in a burst
    server.collector.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    print(listening_line(server), flush=True)
    admin = f", admin API {server.admin_url}" if server.admin_url else ""
    base = server.url.removesuffix("/ws")
    rtvi = f"Pipecat clients (RTVI) on {base}{RTVI_PATH}; " if RTVI_PATH in server.dialect_paths else ""
    print(f"pipesim: serving {what} at {speed:g}x on {server.url} (dashboard {server.http_url}{admin}); {rtvi}"
          f"Ctrl-C to stop", file=sys.stderr, flush=True)
    tls = server.options.tls
    if tls is not None:
        from pipesim.live.tls import trust_hints

        made = f"made by pipesim, kept in {tls.ca.parent}" if tls.ca is not None else f"{tls.cert}"
        print(f"pipesim: TLS ({made}); to trust it:\n" + "\n".join(f"  {hint}" for hint in trust_hints(tls)),
              file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.collector.stop()
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    rec = server.recorder
    recorded = f"; recorded {rec.count} messages to {rec.path}" if rec is not None else ""
    print(f"pipesim: stopped{recorded}", file=sys.stderr, flush=True)
