"""The wire text of a state-manager transition, fast: what ``dumps`` makes of ``wire_messages``, byte for byte.

The live server encodes every transition once, whatever the number of clients; with 1,000 sessions that
is thousands a second, and building the message dicts then running the generic JSON encoder over them cost
about as much as the model step itself. This fills a fixed template instead (strings through the JSON
module's own C escaper, numbers through ``repr`` as the JSON module does). Anything unusual (a number that
is not a plain finite float or int) takes the generic path, so the result never differs
(``tests/test_live_encode.py`` checks that on generated transitions).

>>> from pipesim.state import Transition
>>> tr = Transition(1.5, "abc", 1, 7, "audio", None, "active", "listening", "idle", "idle", "idle", 640, 0.9)
>>> from pipesim.protocol import dumps, wire_messages
>>> encode_transition(tr) == [dumps(m) for m in wire_messages(tr)]
True
"""

from __future__ import annotations

import math
from typing import Any

from pipesim.protocol import CREATED_TEMPLATE as _CREATED
from pipesim.protocol import ENDED_TEMPLATE as _ENDED
from pipesim.protocol import UPDATE_TEMPLATE as _UPDATE
from pipesim.protocol import dumps, wire_messages
from pipesim.protocol import json_string as _quote


def _number(x: Any) -> str | None:
    """JSON for a plain int or finite float (as ``json.dumps`` writes it), else None."""
    kind = type(x)
    if kind is int:
        return int.__repr__(x)
    if kind is float and math.isfinite(x):
        return float.__repr__(x)
    return None


def encode_transition(tr: Any) -> list[str]:
    """The wire messages of one transition, as JSON text (see :func:`pipesim.protocol.wire_messages`)."""
    t, seq = _number(tr.t), _number(tr.seq)
    sid = tr.session_id
    if t is None or seq is None or type(sid) is not str:
        return [dumps(m) for m in wire_messages(tr)]
    event = tr.event
    if event == "session_created":
        return [_CREATED % (_quote(sid), t, seq)]
    size, quality, turn = _number(tr.buffer_size), _number(tr.audio_quality), _number(tr.turn_id)
    error = tr.error
    if size is None or quality is None or turn is None or not (error is None or type(error) is str):
        return [dumps(m) for m in wire_messages(tr)]
    qsid = _quote(sid)
    update = _UPDATE % (qsid, _quote(tr.state), _quote(tr.stt), _quote(tr.llm), _quote(tr.tts), size, quality, t,
                        seq, turn, _quote(event), _quote(tr.status), "null" if error is None else _quote(error))
    if event == "session_stopped":
        ended = _ENDED % (qsid, t, int.__repr__(tr.seq + 1), _quote(error or "stopped"))
        return [update, ended]
    return [update]
