"""The live mock backend: ``pipesim serve`` and ``pipesim replay``, also usable from a notebook.

* :class:`LiveServer` -- the scenario's model stepped in real time, over the orchestrator's WebSocket
  protocol (``/ws``), with controls, faults on demand and an optional recording.
* :class:`ReplayServer` -- a recording or a trace served over the same protocol at its original timing.
* :func:`serve_in_background` / :func:`replay_in_background` -- the same in a background thread, for
  Jupyter (whose event loop is already running) and plain scripts.
* :class:`LiveClient` -- a small asyncio client for tests and scripts.
* :class:`ServerOptions` -- the options both servers take (where they listen, who may connect, ...).

The watching rules, limits and close codes are documented in :mod:`pipesim.live.server`.

>>> import pipesim.live
>>> server = pipesim.live.serve_in_background("frontend_demo", port=0, speed=5)  # doctest: +SKIP
>>> server.url                                                                   # doctest: +SKIP
'ws://127.0.0.1:50123/ws'
>>> server.stop()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use, so that the command line reads the server options
# (:mod:`pipesim.live.options`) without loading the servers.
_EXPORTS = {
    "BackgroundServer": "pipesim.live.background",
    "replay_in_background": "pipesim.live.background",
    "serve_in_background": "pipesim.live.background",
    "LiveClient": "pipesim.live.client",
    "LiveError": "pipesim.errors",
    "LiveServer": "pipesim.live.liveserver",
    "Pacer": "pipesim.live.pacer",
    "Recorder": "pipesim.live.recording",
    "ReplayError": "pipesim.live.recording",
    "load_replay": "pipesim.live.recording",
    "ReplayServer": "pipesim.live.replay",
    "ServerOptions": "pipesim.live.options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipesim.live' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
