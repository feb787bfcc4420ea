"""Stubs: "when a client sends a message like this, answer like that" (WireMock's stub mappings, for the
WebSocket messages of ``/ws`` and ``/rtvi``), and the pattern language they share with the journal's
``count`` and ``find`` (WireMock's request verification).

The pattern language
--------------------
A pattern is a JSON object that matches a value when it is a *subset* of it (:func:`matches`): every key
of the pattern is in the value with a matching value; objects match recursively (the value may have more
keys); lists match element by element (same length); anything else must be equal (``1`` equals ``1.0``,
``true`` is not ``1``). A stub's pattern is matched against the inbound message's view
``{"path", "connection", "session_id", "type", "message"}`` (``message``: the message as the client sent
it; ``session_id``: the session it is about, on ``/rtvi`` the connection's); a journal query against the
journal's entries (``direction``, ``connection``, ``session_id``, ``type``, ``message``, ``result``, ``stub``).

>>> entry = {"direction": "in", "type": "conversation_control", "session_id": "demo-1",
...          "message": {"type": "conversation_control", "action": "pause", "session_id": "demo-1"},
...          "result": {"error": {"code": "illegal_control", "message": "pause: ..."}}}
>>> matches({"session_id": "demo-1", "message": {"action": "pause"}}, entry)
True
>>> matches({"result": {"error": {"code": "illegal_control"}}}, entry), matches({"message": {"action": "stop"}}, entry)
(True, False)

What a stub does
----------------
Every message a dialect has parsed goes through :meth:`Stubs.take` (the hub's ``inbound`` hook). The stub
that takes it is the first, by ``priority`` (1 first; among equals, the newest), whose pattern matches
and which is not exhausted (``times``: it takes at most that many messages, then stays listed with its
count but takes no more; the next stub or the normal handling gets the message). It then, after
``delay_s`` *simulated* seconds (0: at once; a paused clock holds it, ``clock/advance`` releases it on time;
the answer is dropped if the connection has closed by then):

1. sends its ``respond`` messages to the connection that sent the message, in order (on ``/ws``:
   ``session_id``, ``timestamp`` and ``seq`` filled in when the type has them, as a push does; on
   ``/rtvi``: ``label``, and the request's ``id`` on a ``server-response`` or ``error-response``);
2. applies its ``fault`` (as ``POST /__admin/faults``);
3. with ``pass_through``, hands the message to the normal handling (the model applies it: the stub's
   replies come first); without it (the default), the stub *replaces* the normal handling;
4. closes the connection with its ``close`` code once what was queued for it is written.

The journal shows it: the message's entry names the ``stub`` and its ``result`` is ``"stubbed"``
(replaced), ``"delayed"`` (passed through, not handled yet), or what the normal handling gave. A reset
removes every stub.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipesim.live.connection import RTVI_PATH, Client
from pipesim.live.hub import Hub
from pipesim.live.rtvi import LABEL
from pipesim.live.rtvi_codec import encode_message
from pipesim.live.source import LiveModel
from pipesim.protocol import json_schemas

__all__ = ["CLOSE_CODES", "JOURNAL_FIELDS", "STUB_FIELDS", "Stub", "Stubs", "filled", "matches"]

#: What a stub's pattern may name (the inbound message's view), and what a journal query may name.
STUB_FIELDS = ("path", "connection", "session_id", "type", "message")
JOURNAL_FIELDS = ("direction", "connection", "session_id", "type", "message", "result", "stub")
#: The close codes a stub may close with: the application's own (4000-4999) and the standard ones a server
#: sends (normal, going away, policy violation, internal error, try again later).
CLOSE_CODES = frozenset({1000, 1001, 1008, 1011, 1013, *range(4000, 5000)})


def matches(pattern: Any, value: Any) -> bool:
    """Whether ``pattern`` is a JSON subset of ``value`` (see the module's docstring).

    >>> matches({"a": {"b": 1}}, {"a": {"b": 1.0, "c": 2}, "d": 3}), matches([1, {"x": 1}], [1, {"x": 1, "y": 2}])
    (True, True)
    >>> matches(True, 1), matches({"a": None}, {}), matches({"a": None}, {"a": None})
    (False, False, True)
    """
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches(v, value[k]) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and len(pattern) == len(value) and all(map(matches, pattern, value))
    if isinstance(pattern, bool) or isinstance(value, bool):
        return pattern is value
    return bool(pattern == value)


#: The fields of each message type of the seed's protocol.
_FIELDS = {name: set(schema.get("properties", {})) for name, schema in json_schemas().items()}


def filled(type_name: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The ``values`` whose fields the message type has (an ``error`` has no seq nor timestamp).

    >>> sorted(filled("error", {"session_id": "a", "seq": 0, "timestamp": 0.0}))
    ['session_id']
    """
    fields = _FIELDS.get(type_name) if isinstance(type_name, str) else None
    return {k: v for k, v in values.items() if fields is None or k in fields}


@dataclass(eq=False)
class Stub:
    """One stub: its pattern (``when``, of :data:`STUB_FIELDS`), what it does, and how often it matched."""

    id: str
    when: dict[str, Any]
    respond: list[dict[str, Any]] = field(default_factory=list)
    #: As the body of ``POST /__admin/faults`` (``fault``, ``service``, ``duration_s``, ``session_id``).
    fault: dict[str, Any] | None = None
    #: ``(code, reason)``.
    close: tuple[int, str] | None = None
    delay_s: float = 0.0
    pass_through: bool = False
    priority: int = 5
    times: int | None = None
    #: Messages it took so far.
    matched: int = 0
    #: When it was added (among equal priorities the newest takes the message).
    order: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.matched >= self.times


class Stubs:
    """The stubs of one live server: handed the hub (the way to the connections, and the ``inbound`` hook,
    which it takes over) and the model (faults, the simulated clock; a reset removes every stub).

    >>> from pipesim.scenario import Scenario
    >>> stubs = Stubs(Hub(), LiveModel(Scenario()))
    >>> _ = stubs.add(Stub(stubs.new_id(), {"path": "/ws", "type": "conversation_control"}, priority=9))
    >>> _ = stubs.add(Stub(stubs.new_id(), {"path": "/ws", "message": {"action": "pause"}}))
    >>> stubs.match({"path": "/ws", "type": "conversation_control", "message": {"action": "pause"}}).id
    'stub-2'
    """

    def __init__(self, hub: Hub, model: LiveModel) -> None:
        self.hub, self.model = hub, model
        self._stubs: dict[str, Stub] = {}
        self._ordered: list[Stub] = []  # in the order they are tried
        self._ids = itertools.count(1)
        self._added = itertools.count()
        hub.inbound = self.take
        model.on_reset(lambda old: self.clear())

    # The registry -------------------------------------------------------------------------------------
    def new_id(self) -> str:
        """An id no stub has (``stub-1``, ``stub-2``, ...)."""
        while (sid := f"stub-{next(self._ids)}") in self._stubs:
            pass
        return sid

    def __contains__(self, stub_id: str) -> bool:
        return stub_id in self._stubs

    def __iter__(self) -> Iterator[Stub]:
        """The stubs in the order they are tried."""
        return iter(list(self._ordered))

    def __len__(self) -> int:
        return len(self._stubs)

    def get(self, stub_id: str) -> Stub | None:
        return self._stubs.get(stub_id)

    def add(self, stub: Stub) -> Stub:
        """Register ``stub`` (``KeyError`` when its id is taken)."""
        if stub.id in self._stubs:
            raise KeyError(stub.id)
        stub.order = next(self._added)
        self._stubs[stub.id] = stub
        self._sort()
        return stub

    def remove(self, stub_id: str) -> Stub | None:
        stub = self._stubs.pop(stub_id, None)
        self._sort()
        return stub

    def clear(self) -> int:
        """Remove every stub (ids start again at ``stub-1``); how many there were."""
        n = len(self._stubs)
        self._stubs.clear()
        self._ids = itertools.count(1)
        self._sort()
        return n

    def _sort(self) -> None:
        self._ordered = sorted(self._stubs.values(), key=lambda s: (s.priority, -s.order))

    def match(self, view: dict[str, Any]) -> Stub | None:
        """The stub that takes a message of this view (None: none does)."""
        for stub in self._ordered:
            if not stub.exhausted and matches(stub.when, view):
                return stub
        return None

    # An inbound message ---------------------------------------------------------------------------------
    def take(self, client: Client, path: str, session_id: str | None, message: dict[str, Any],
             handle: Callable[[], None]) -> None:
        """The hub's ``inbound`` hook: the stub that matches answers, else ``handle()`` now."""
        stub = self.match({"path": path, "connection": client.id, "session_id": session_id,
                           "type": message.get("type"), "message": message}) if self._ordered else None
        if stub is None:
            handle()
            return
        stub.matched += 1
        entry = client.inbound  # the message's journal entry (on /ws, with a journal)
        if entry is not None:
            entry["stub"] = stub.id
            if not stub.pass_through:
                entry["result"] = "stubbed"
            elif stub.delay_s > 0:
                entry["result"] = "delayed"
        answer = functools.partial(self._answer, stub, client, path, session_id, message, handle, entry)
        if stub.delay_s == 0:
            answer()
            return
        with self.model.applying():  # from now, on the simulated clock
            self.model.sim.env.timeout(stub.delay_s).callbacks.append(
                lambda _event: None if client.closing else answer())

    def _answer(self, stub: Stub, client: Client, path: str, session_id: str | None, message: dict[str, Any],
                handle: Callable[[], None], entry: dict[str, Any] | None) -> None:
        # What the answer causes is this message's: a delayed answer may come while another message of the
        # same client is being handled (its catch-up stepped the model), whose result it must not touch.
        saved, client.inbound = client.inbound, entry
        try:
            for reply in stub.respond:
                self._reply(client, path, session_id, message, reply)
            if entry is not None:  # (an error among the replies is not the message's result)
                entry["result"] = None if stub.pass_through else "stubbed"
            if stub.fault is not None:
                fault = stub.fault
                if fault["fault"] == "disconnect":
                    self.hub.disconnect(fault.get("session_id"))
                else:
                    self.model.inject_fault(fault["fault"], fault.get("service"), fault.get("duration_s", 5.0))
            if stub.pass_through:
                handle()
                if entry is not None and entry["result"] is None:
                    entry["result"] = "applied"
            if stub.close is not None:
                self.hub.close_when_drained(client, *stub.close)
        finally:
            client.inbound = saved

    def _reply(self, client: Client, path: str, session_id: str | None, message: dict[str, Any],
               reply: dict[str, Any]) -> None:
        if path == RTVI_PATH:
            out = {"label": LABEL, **reply}
            if out.get("type") in ("server-response", "error-response") and "id" not in out \
                    and isinstance(message.get("id"), str):
                out["id"] = message["id"]  # what the client's request promise waits for
            self.hub.offer(client, encode_message(out))
            return
        out = dict(reply)
        now = self.model.sim.env.now
        fields = filled(out.get("type"), {"session_id": session_id, "timestamp": now, "seq": 0})
        if "session_id" in fields and out.get("session_id") is None and session_id is not None:
            out["session_id"] = session_id
        if "timestamp" in fields:
            out.setdefault("timestamp", now)
        if "seq" in fields and "seq" not in out:
            mgr, sid = self.model.sim.manager, out.get("session_id")
            out["seq"] = mgr.reserve_seq(sid) if isinstance(sid, str) and sid in mgr else 0
        self.hub.send(client, out)
