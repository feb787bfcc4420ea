"""The live mock backend: ``pipesim serve`` and ``pipesim replay``, also usable from a notebook.

* :class:`LiveServer` -- the scenario's model stepped in real time, over the orchestrator's WebSocket
  protocol (``/ws``), with controls, faults on demand and an optional recording.
* :class:`ReplayServer` -- a recording or a trace served over the same protocol at its original timing.
* :func:`serve_in_background` / :func:`replay_in_background` -- the same in a background thread, for
  Jupyter (whose event loop is already running) and plain scripts.
* :class:`LiveClient` -- a small asyncio client for tests and scripts.

The watching rules, limits and close codes are documented in :mod:`pipesim.live.server`.

>>> import pipesim.live
>>> server = pipesim.live.serve_in_background("frontend_demo", port=0, speed=5)  # doctest: +SKIP
>>> server.url                                                                   # doctest: +SKIP
'ws://127.0.0.1:50123/ws'
>>> server.stop()                                                                # doctest: +SKIP
"""

from pipesim.errors import LiveError
from pipesim.live.background import BackgroundServer, replay_in_background, serve_in_background
from pipesim.live.client import LiveClient
from pipesim.live.liveserver import LiveServer
from pipesim.live.pacer import Pacer
from pipesim.live.recording import Recorder, ReplayError, load_replay
from pipesim.live.replay import ReplayServer

__all__ = ["BackgroundServer", "LiveClient", "LiveError", "LiveServer", "Pacer", "Recorder", "ReplayError",
           "ReplayServer", "load_replay", "replay_in_background", "serve_in_background"]
