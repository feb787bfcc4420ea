"""The live server's fast encoder writes exactly what ``dumps(wire_messages(tr))`` writes, for any transition."""

import math
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from pipesim.live.encode import encode_transition
from pipesim.protocol import dumps, wire_messages
from pipesim.state import Transition
from pipesim.vocabulary import PipelineState, ServiceState, SessionStatus

PIPELINE_STATES, SERVICE_STATES, SESSION_STATUSES = (get_args(x) for x in (PipelineState, ServiceState, SessionStatus))

EVENTS = st.sampled_from(["session_created", "session_started", "audio", "session_stopped", "service_failed",
                          "snapshot"])
numbers = st.one_of(st.integers(0, 2**70), st.floats(allow_nan=True, allow_infinity=True))
text = st.text()  # any id or error: quotes, backslashes, control characters, non-ASCII, lone surrogates

transitions = st.builds(
    Transition, t=numbers, session_id=text, turn_id=st.integers(0, 10**9), seq=st.integers(0, 10**12),
    event=EVENTS, service=st.none(), status=st.sampled_from(sorted(SESSION_STATUSES)),
    state=st.sampled_from(sorted(PIPELINE_STATES)), stt=st.sampled_from(sorted(SERVICE_STATES)),
    llm=st.sampled_from(sorted(SERVICE_STATES)), tts=st.sampled_from(sorted(SERVICE_STATES)),
    buffer_size=st.integers(0, 2**40), audio_quality=numbers, error=st.none() | text)


def generic(tr: Transition) -> list[str] | type[Exception]:
    try:
        return [dumps(m) for m in wire_messages(tr)]
    except ValueError:  # NaN or infinity: not JSON, refused by both
        return ValueError


@given(transitions)
def test_fast_encoding_is_the_generic_one_byte_for_byte(tr: Transition) -> None:
    expected = generic(tr)
    if expected is ValueError:
        assert not all(math.isfinite(x) for x in (tr.t, tr.audio_quality))
        try:
            encode_transition(tr)
        except ValueError:
            return
        raise AssertionError("a non-finite number was encoded")
    assert encode_transition(tr) == expected
