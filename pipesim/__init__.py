"""pipesim: simulate and test a real-time voice-agent pipeline (audio -> STT -> LLM -> TTS).

One model, two clocks: the real, clock-free state manager (:mod:`pipesim.state`) is driven by a SimPy
model, offline as fast as it can run, or live by an asyncio pacer behind a WebSocket server.

>>> import pipesim
>>> res = pipesim.simulate("baseline", seed=1)   # doctest: +SKIP
>>> res.turns.e2e_latency.quantile(0.95)          # doctest: +SKIP
"""

from pipesim.model import Simulation
from pipesim.protocol import ProtocolError, parse_message
from pipesim.results import Results, simulate
from pipesim.scenario import Scenario, ScenarioError, load_scenario
from pipesim.state import IllegalTransition, PipelineStateManager, Transition
from pipesim.trace import Trace

__all__ = ["IllegalTransition", "PipelineStateManager", "ProtocolError", "Results", "Scenario", "ScenarioError",
           "Simulation", "Trace", "Transition", "load_scenario", "parse_message", "simulate"]
__version__ = "0.1.0"
