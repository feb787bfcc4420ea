"""The SimPy model of the pipeline. :class:`Simulation` is the one entry point."""

from pipesim.model.simulation import Simulation

__all__ = ["Simulation"]
