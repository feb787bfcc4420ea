"""The real pipeline state manager: clock-free and I/O-free (no simpy, asyncio or websockets).

>>> from pipesim.state import PipelineStateManager
>>> m = PipelineStateManager()
>>> m.create_session("abc", t=0.0).event
'session_created'
"""

from pipesim.state.manager import Observer, PipelineStateManager, Transition
from pipesim.state.rules import SERVICES, IllegalTransition, StateError, UnknownSession

__all__ = ["SERVICES", "IllegalTransition", "Observer", "PipelineStateManager", "StateError", "Transition",
           "UnknownSession"]
