"""pipesim: simulate and test a real-time voice-agent pipeline (audio -> STT -> LLM -> TTS).

One model, two clocks: the real, clock-free state manager (:mod:`pipesim.state`) is driven by a SimPy
model, offline as fast as it can run, or live by an asyncio pacer behind a WebSocket server.

>>> import pipesim
>>> res = pipesim.simulate("baseline", seed=1)   # doctest: +SKIP
>>> res.turns.e2e_latency.quantile(0.95)          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use, so that ``import pipesim.state`` (the clock-free core) does not pull in
# simpy, pandas or websockets.
_EXPORTS = {
    "IllegalTransition": "pipesim.state",
    "PipelineStateManager": "pipesim.state",
    "Transition": "pipesim.state",
    "ProtocolError": "pipesim.protocol",
    "parse_message": "pipesim.protocol",
    "Scenario": "pipesim.scenario",
    "ScenarioError": "pipesim.scenario",
    "load_scenario": "pipesim.scenario",
    "Simulation": "pipesim.model",
    "Results": "pipesim.results",
    "simulate": "pipesim.results",
    "Trace": "pipesim.trace",
    "MMc": "pipesim.theory",
    "Replications": "pipesim.replications",
    "SweepResult": "pipesim.replications",
    "replicate": "pipesim.replications",
    "sweep": "pipesim.replications",
    "SLO": "pipesim.slo",
    "CheckResult": "pipesim.gate",
    "check": "pipesim.gate",
    "Plan": "pipesim.planning",
    "plan": "pipesim.planning",
    "headroom": "pipesim.planning",
}
_SUBMODULES = ("analysis", "plots", "live", "protocol", "scenario", "state", "model", "trace", "results",
               "calibration", "replications", "theory", "slo", "gate")
__all__ = sorted(_EXPORTS) + list(_SUBMODULES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"pipesim.{name}")
    else:
        raise AttributeError(f"module 'pipesim' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
