"""Every error pipesim raises on purpose, with one base class, :class:`PipesimError`.

A ``PipesimError`` is a problem with what the user gave pipesim (a scenario, a trace, a message, a
control that does not fit a session's state): its ``str()`` is the whole message, ready to print, and
the command line prints it as one ``pipesim: error: ...`` line with no traceback. Anything else that
escapes is a pipesim bug.

Each error also derives from the built-in exception a caller would naturally catch (``ValueError`` for bad
input, ``RuntimeError`` for a server that cannot start), so ``except ValueError`` keeps working.

>>> from pipesim.errors import PipesimError, ScenarioError
>>> try:
...     raise ScenarioError(["x.yaml:3 services.llm.capacity: must be >= 1, got 0"])
... except PipesimError as exc:
...     print(exc)
x.yaml:3 services.llm.capacity: must be >= 1, got 0

This module imports nothing but :mod:`pipesim.vocabulary`, so the clock-free state core can use it.
"""

from __future__ import annotations

from typing import ClassVar

from pipesim.vocabulary import SERVICES


class PipesimError(Exception):
    """Base class of every error pipesim raises about its input; ``str(err)`` is the message to show."""


class ScenarioError(PipesimError, ValueError):
    """A scenario could not be loaded; ``problems`` holds one message per problem (file, line, field)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:  # picklable for process pools
        return type(self), (self.problems,)


class ProtocolError(PipesimError, ValueError):
    """A wire message could not be parsed; ``str(err)`` says what is wrong and where."""


class TraceError(PipesimError, ValueError):
    """A trace or recording file could not be read; the message names the file and line."""


class CalibrationError(PipesimError, ValueError):
    """A measurements file or a fit request that cannot be used; the message names the file, line and column."""


class TooLargeError(PipesimError, MemoryError):
    """A table asked for whole would not fit in the memory available; the message says how to read it in parts."""


class LiveError(PipesimError, RuntimeError):
    """A live server cannot start (port in use, recording not writable); the message says which."""


class RecordError(LiveError):
    """``pipesim record`` cannot connect or lost its server for good; the message names the URL and why."""


class StateError(PipesimError):
    """Base class of the state manager's errors."""


class UnknownSession(StateError):
    """An event named a session the state manager does not know."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)  # all constructor arguments, so the error can be rebuilt from args
        self.session_id = session_id

    def __str__(self) -> str:
        return f"unknown session {self.session_id!r}"


class IllegalTransition(StateError):
    """An event is not allowed in the current state.

    Names the session, the part of the session that refused (``lifecycle``, ``pipeline`` or a service:
    then ``service`` is set too), the state it was in and the one the event requested.
    """

    #: The state each event asks for: the rule tables (:data:`pipesim.state.rules.REQUESTED`) fill it in when
    #: they load, so that this module imports nothing of pipesim's but the vocabulary (no import cycle).
    requested_states: ClassVar[dict[str, str]] = {}

    def __init__(self, session_id: str, part: str, current: str, event: str, reason: str = "") -> None:
        super().__init__(session_id, part, current, event, reason)  # rebuildable from args (SimPy does that)
        self.session_id, self.part, self.current, self.event, self.reason = session_id, part, current, event, reason
        self.service = part if part in SERVICES else None

    @property
    def requested(self) -> str:
        """The state the refused event asked for (the event's name where it names no state)."""
        return self.requested_states.get(self.event, self.event)

    def __str__(self) -> str:
        text = (f"session {self.session_id!r}: {self.part} cannot go from {self.current!r} to "
                f"{self.requested!r} on {self.event}")
        return f"{text} ({self.reason})" if self.reason else text


class SLOError(PipesimError, ValueError):
    """An SLO that does not read ``FIGURE OP VALUE`` (e.g. ``e2e_latency_p95 <= 1.5s``); the message says why."""


class PlanError(PipesimError, ValueError):
    """A capacity plan that cannot start (an unknown service, a bad cost, no load to measure); says which."""
