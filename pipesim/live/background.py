"""A live or replay server in a thread of its own, for notebooks (whose event loop is already running) and
synchronous code: :class:`BackgroundServer`, :func:`serve_in_background`, :func:`replay_in_background`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pipesim.errors import LiveError
from pipesim.live.liveserver import LiveServer
from pipesim.live.replay import ReplayServer
from pipesim.live.server import BaseServer
from pipesim.scenario import Scenario

_S = TypeVar("_S", bound=BaseServer)
_T = TypeVar("_T")


class BackgroundServer(Generic[_S]):
    """A server running in a thread with its own event loop, so it works from Jupyter (whose loop is
    already running) or any synchronous code. Use :func:`serve_in_background` or
    :func:`replay_in_background`; call :meth:`stop` when done (or use it as a context manager).

    Touch the model only through :meth:`call`, which runs a function on the server's loop:
    ``bg.call(lambda: bg.server.sim.trace.events_frame())``.
    """

    def __init__(self, server: _S, timeout: float = 30.0) -> None:
        self.server: _S = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=f"pipesim-{type(server).__name__}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise LiveError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], _T], timeout: float = 10.0) -> _T:
        """Run ``fn()`` on the server's event loop thread and return its result."""
        if self._loop is None or not self.running:
            raise RuntimeError("the server is not running")

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (clients get 1001, the recording is closed) and wait for its thread."""
        if self._loop is not None and self._stop_requested is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop_requested.wait()
        await self.server.stop()

    def __enter__(self) -> BackgroundServer[_S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BackgroundServer {self.server!r}>"

    def _repr_html_(self) -> str:
        s = self.server
        return (f"<b>pipesim {type(s).__name__}</b> on <code>{s.url}</code> "
                f"(dashboard <a href='{s.http_url}' target='_blank'>{s.http_url}</a>), "
                f"{'running' if self.running else 'stopped'}")


def serve_in_background(scenario: Scenario | str | Path | dict[str, Any] = "frontend_demo", *,
                        speed: float = 1.0, seed: int | None = None, **options: Any) -> BackgroundServer[LiveServer]:
    """Start a :class:`LiveServer` in a background thread; returns once it listens. ``options`` are the
    live server's other keywords (``port``, ``host``, ``token``, ``options=ServerOptions(...)``, ...).

    >>> server = serve_in_background("frontend_demo", port=0)   # doctest: +SKIP
    >>> server.url                                                # doctest: +SKIP
    'ws://127.0.0.1:53211/ws'
    >>> server.stop()                                             # doctest: +SKIP
    """
    return BackgroundServer(LiveServer(scenario, speed=speed, seed=seed, **options))


def replay_in_background(source: str | Path | Iterable[tuple[float, dict[str, Any]]], *, speed: float = 1.0,
                         loop: bool = False, **options: Any) -> BackgroundServer[ReplayServer]:
    """Start a :class:`ReplayServer` in a background thread; returns once it listens (``options``: as
    :func:`serve_in_background`'s).

    >>> server = replay_in_background("out/trace.jsonl", port=0, speed=5)   # doctest: +SKIP
    """
    return BackgroundServer(ReplayServer(source, speed=speed, loop=loop, **options))
