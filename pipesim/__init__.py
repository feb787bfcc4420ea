"""pipesim: simulate and test a real-time voice-agent pipeline (audio -> STT -> LLM -> TTS).

One model, two clocks: the real, clock-free state manager (:mod:`pipesim.state`) is driven by a SimPy
model, offline as fast as it can run, or live by an asyncio pacer behind a WebSocket server.
"""

from pipesim.protocol import ProtocolError, parse_message
from pipesim.state import IllegalTransition, PipelineStateManager, Transition

__all__ = ["IllegalTransition", "PipelineStateManager", "ProtocolError", "Transition", "parse_message"]
__version__ = "0.1.0"
