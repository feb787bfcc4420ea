"""Hostile RTVI clients, generated: every bad frame on ``/rtvi`` gets one RTVI error, never a close or a traceback.

One server runs (in a background thread) and one client sends ``client-ready``, then hypothesis throws frames
at it, as binary or text WebSocket frames (the transport reads both as protobuf): random bytes, truncated and
overlong varints, wrong wire types, field 4 holding non-JSON, non-object JSON, 5,000-digit integers and
5,000-deep arrays, envelopes with a foreign label, an unknown or missing type, ``client-message`` whose data
holds NaN, Infinity or lone surrogates, audio frames with absurd sample rates, empty frames, frames around the
size limit. Each frame's expected answer follows from how it was built (:func:`expected_for`). After each
frame a sentinel ``client-message`` marks the end of its answer, so the test sees exactly what it caused.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from pipesim._jsonsafe import MAX_DEPTH
from pipesim.errors import ProtocolError
from pipesim.live import BackgroundServer, LiveServer, serve_in_background
from pipesim.live.rtvi_codec import decode_frame, encode_message
from pipesim.protocol import MAX_MESSAGE_BYTES

QUIET = {"name": "rtvi-fuzz", "seed": 4, "sessions": {
    "arrivals": {"kind": "at_once", "count": 0}, "turns": 1000, "barge_in_probability": 0.0,
    "first_speech_delay_s": 100_000.0}}  # the simulated user speaks only when sent send-text

#: Stands for an integer of 5,000 digits (Python refuses to print those, so they are spliced into the text).
HUGE_INT = "<huge int>"


# Protobuf by hand (independent of the codec under test) ------------------------------------------------
def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def message_frame(data: bytes) -> bytes:
    """``pipecat.Frame{message: MessageFrame{data}}``."""
    return field(4, field(1, data))


# What a frame must get ----------------------------------------------------------------------------------
class Expect(NamedTuple):
    """``answer``: ``error`` (a frame-level refusal), ``refused`` (``error-response`` with ``id``, or
    ``error`` without one), ``echo`` (``server-response`` echoing ``received``), ``nothing`` (audio),
    ``maybe`` (send-text: nothing, or ``refused``)."""

    answer: str
    id: str | None = None
    t: Any = None
    received: Any = None
    why: str = ""  # a word the refusal must contain


def non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return isinstance(value, list) and any(non_finite(v) for v in value)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def expected_for(envelope: dict[str, Any]) -> Expect:
    """What pipesim's mock bot answers a readable envelope (the README's "For frontend teams", as a spec)."""
    raw_id = envelope.get("id")
    id_ = raw_id if isinstance(raw_id, str) and raw_id else None
    type_, data = envelope.get("type"), envelope.get("data")
    if envelope.get("label") != "rtvi-ai" or not isinstance(type_, str) or type_ == "client-ready":
        return Expect("refused", id_)
    if type_ == "send-text":
        content = data.get("content") if isinstance(data, dict) else None
        return Expect("maybe" if isinstance(content, str) else "refused", id_)
    if type_ == "client-message":
        t = data.get("t") if isinstance(data, dict) else None
        if not isinstance(t, str):
            return Expect("refused", id_, why="data.t")
        received = data.get("d")
        if non_finite(received):
            return Expect("refused", id_, why="JSON cannot carry")
        if depth(received) > MAX_DEPTH - 3:  # the echo puts it 3 levels down
            return Expect("refused", id_, why="nested")
        return Expect("echo", id_, t, received)
    return Expect("refused", id_, why="not supported")


# Frames -------------------------------------------------------------------------------------------------
texts = st.one_of(
    st.text(max_size=20),                                  # any code point, lone surrogates included
    st.sampled_from(["", "rtvi-ai", "client-ready", "client-message", "send-text", "\ud800", "\udfff", "💥",
                     "é\u202e", "x" * 300]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, 1e308, 5e-324, math.nan, math.inf, -math.inf, "1e400", HUGE_INT]),  # "1e400": reads as inf
)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, texts), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)
nested = st.integers(min_value=25, max_value=31).map(lambda n: json.loads("[" * n + "]" * n))


def json_text(value: Any) -> str:
    """JSON as a hostile client writes it: NaN/Infinity literals, \\uXXXX escapes of lone surrogates."""
    return (json.dumps(value).replace(json.dumps(HUGE_INT), "9" * 5000)
            .replace(json.dumps("1e400"), "1e400"))


def readable(value: Any) -> bool:
    """Whether the server can read it at all (no 5,000-digit integer, no deeper than the limit)."""
    return HUGE_INT not in json.dumps(value) and depth(value) <= MAX_DEPTH


def reads_as(value: Any) -> Any:
    return json.loads(json_text(value))  # "1e400" becomes inf, as it will on the server


@st.composite
def client_messages(draw: st.DrawFn) -> tuple[bytes, Expect]:
    """A well-formed ``client-message`` whose ``d`` is any JSON value: NaN, Infinity, lone surrogates, deep."""
    envelope = {"label": "rtvi-ai", "type": "client-message", "id": draw(texts),
                "data": {"t": draw(texts), "d": draw(json_values | nested)}}
    text = json_text(envelope).encode("utf-8")
    return message_frame(text), expected_for(reads_as(envelope)) if readable(envelope) else Expect("error")


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes, Expect]:
    """An RTVI envelope, right or wrong in any of its fields."""
    envelope: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "label": st.just("rtvi-ai") | json_values,
        "id": st.text(max_size=6) | json_values,
    }))
    envelope["label"] = envelope.get("label", draw(st.sampled_from(["rtvi-ai", "rtvi-ai", "pipecat", None])))
    type_ = draw(st.sampled_from(["client-message", "client-message", "send-text", "client-ready", "dtmf",
                                  "ui-event", "disconnect-bot"]) | json_values)
    if type_ == "disconnect-bot":  # it would end the session under test (tested in test_rtvi.py)
        type_ = "client-message"
    envelope["type"] = type_
    data = draw(st.one_of(
        st.fixed_dictionaries({"t": texts | json_values}, optional={"d": json_values | nested}),
        st.fixed_dictionaries({"content": texts | json_values}),
        json_values))
    envelope["data"] = data
    if not readable(envelope):
        return message_frame(json_text(envelope).encode("utf-8")), Expect("error", why="bad frame")
    return message_frame(json_text(envelope).encode("utf-8")), expected_for(reads_as(envelope))


def not_an_object(body: bytes) -> bool:
    try:
        return not isinstance(json.loads(body.decode("utf-8")), dict)
    except ValueError:
        return True


#: Field 4 holding what is not an RTVI envelope: not JSON, not UTF-8, not an object, too deep, huge.
bad_bodies = st.one_of(
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")).filter(not_an_object),
    st.binary(max_size=60).filter(not_an_object),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json_text(v).encode()),
    st.integers(min_value=MAX_DEPTH + 1, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=MAX_DEPTH + 1, max_value=5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(min_value=641, max_value=5000).map(lambda n: b'{"label":"rtvi-ai","x":' + b"7" * n + b"}"),
).map(lambda body: (message_frame(body), Expect("error", why="bad frame")))


@st.composite
def audio_frames(draw: st.DrawFn) -> tuple[bytes, Expect]:
    """Microphone audio with any sample rate and channel count (2**64 - 1 included): counted, unanswered."""
    absurd = st.integers(min_value=0, max_value=2**64 - 1) | st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1])
    audio = (field(3, draw(st.binary(max_size=64))) + field(4, draw(absurd)) + field(5, draw(absurd))
             + draw(st.sampled_from([b"", field(1, 7), field(2, b"mic"), field(6, 2**40)])))
    return field(2, audio), Expect("nothing")


malformed = st.sampled_from([
    b"",                                # empty
    b"\x22",                            # truncated key's length
    b"\x22\xff",                        # truncated varint
    b"\xff" * 11,                       # varint longer than 10 bytes
    b"\x22\x05\x0a\x03",                # field 4 says 5 bytes, 2 left
    b"\x20\x01",                        # field 4 as a varint
    b"\x23", b"\x24", b"\x26", b"\x27",  # wire types 3, 4, 6, 7
    b"\x21\x00\x00",                    # fixed64 truncated
    b"\x02\x00",                        # field 0
    field(1, b"hello"), field(3, b"transcript"),  # text and transcription frames
    b'{"label": "rtvi-ai", "type": "client-ready"}',  # a JSON envelope without the protobuf
    field(2, b"\x1a\x09"),              # audio whose samples are cut short
    field(4, b"\x0a"),                  # message data cut short
]).map(lambda frame: (frame, Expect("error", why="")))


def random_bytes(frame: bytes) -> tuple[bytes, Expect]:
    try:
        decoded = decode_frame(frame)
    except ProtocolError:
        return frame, Expect("error")
    if decoded.kind == "audio":
        return frame, Expect("nothing")
    if decoded.message is None:
        return frame, Expect("error")
    return frame, expected_for(decoded.message)


@st.composite
def around_the_limit(draw: st.DrawFn) -> tuple[bytes, Expect]:
    """A valid client-message padded to a frame size just under, at or just over the limit."""
    size = MAX_MESSAGE_BYTES + draw(st.integers(min_value=-2, max_value=2))
    head = message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"pad","data":{"t":"p","d":""}}')
    pad = size - len(head)
    frame = message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"pad","data":{"t":"p","d":"'
                          + b"x" * pad + b'"}}')
    pad -= len(frame) - size  # the two length varints grew
    frame = message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"pad","data":{"t":"p","d":"'
                          + b"x" * pad + b'"}}')
    assert len(frame) == size
    if size > MAX_MESSAGE_BYTES:
        return frame, Expect("error", why="the limit")
    return frame, Expect("echo", "pad", "p", "x" * pad)


frames = st.one_of(
    client_messages(), envelopes(), bad_bodies, audio_frames(), malformed, around_the_limit(),
    st.binary(max_size=200).map(random_bytes),
).flatmap(lambda case: st.tuples(st.just(case), st.sampled_from(["binary", "text"])))


# Harness ------------------------------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[BackgroundServer[LiveServer]]:
    with serve_in_background(QUIET, port=0, speed=20) as bg:
        yield bg


def rtvi_url(server: BackgroundServer[LiveServer]) -> str:
    return server.url.removesuffix("/ws") + "/rtvi"


def send(ws: ClientConnection, type_: str, data: Any, id_: str) -> None:
    ws.send(encode_message({"label": "rtvi-ai", "type": type_, "id": id_, "data": data}))


def answers_until(ws: ClientConnection, sentinel: str) -> list[dict[str, Any]]:
    """The answers to requests (model events and a failed turn's ``error`` aside) before the sentinel's."""
    got = []
    while True:
        raw = ws.recv(timeout=10)
        assert isinstance(raw, bytes), "RTVI frames are binary"
        frame = decode_frame(raw)
        if frame.kind == "audio":  # the bot speaking
            continue
        message = frame.message
        assert message is not None and message["label"] == "rtvi-ai", message
        if message.get("id") == sentinel:
            assert message["type"] == "server-response", message
            return got
        if message["type"] in ("error-response", "server-response", "bot-ready") or (
                message["type"] == "error" and not re.match(r"turn \d+ failed", message["data"]["error"])):
            got.append(message)


def ready(ws: ClientConnection, id_: str) -> list[str]:
    """Send ``client-ready``; the types of what answers it (up to a sentinel sent after it)."""
    send(ws, "client-ready", {"version": "2.1.0"}, id_)
    send(ws, "client-message", {"t": "sentinel"}, id_ + "-sentinel")
    return [m["type"] for m in answers_until(ws, id_ + "-sentinel")]


def check_answer(expect: Expect, answer: list[dict[str, Any]]) -> None:
    if expect.answer == "nothing" or (expect.answer == "maybe" and not answer):
        assert answer == []
        return
    assert len(answer) == 1, answer
    (got,) = answer
    if expect.answer == "echo":
        assert got["type"] == "server-response" and got["id"] == (expect.id or ""), got
        assert got["data"]["t"] == expect.t and got["data"]["d"]["received"] == expect.received, got
        return
    error = got["data"]["error"]
    assert isinstance(error, str) and "\n" not in error and not error.startswith("internal error"), got
    assert expect.why in error, (expect.why, got)
    if expect.answer == "error":
        assert got["type"] == "error" and got["data"]["fatal"] is False and "id" not in got, got
    elif expect.id is None:
        assert got["type"] == "error" and got["data"]["fatal"] is False, got
    else:
        assert got["type"] == "error-response" and got["id"] == expect.id, got


def test_every_hostile_rtvi_frame_gets_one_error_and_the_bot_carries_on(
        server: BackgroundServer[LiveServer], errors_logged: list[logging.LogRecord]) -> None:
    with connect(rtvi_url(server)) as ws:
        assert ready(ws, "ready") == ["bot-ready"]
        counter = iter(range(10**9))

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(frames)
        # The two classes the issue found in the server's log: a 5,000-digit number, NaN in an echo.
        @example(((message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"big","data":{"t":"x","d":'
                                 + b"9" * 5000 + b"}}"), Expect("error", why="digits")), "binary"))
        @example(((message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"nan","data":{"t":"x",'
                                 b'"d":{"v":[1,NaN]}}}'), Expect("refused", "nan", why="data.d.v[1] is NaN")),
                  "binary"))
        @example(((message_frame(b'{"label":"rtvi-ai","type":"client-message","id":"inf","data":{"t":"x",'
                                 b'"d":-1e400}}'), Expect("refused", "inf", why="-Infinity")), "text"))
        @example(((message_frame('{"label":"rtvi-ai","type":"client-message","id":"s","data":{"t":"\ud800",'
                                 '"d":"\udfff💥"}}'.encode("utf-8", "surrogatepass")), Expect("error")),
                  "binary"))
        @example(((message_frame(json.dumps({"label": "rtvi-ai", "type": "client-message", "id": "s2", "data": {
            "t": "\ud800", "d": ["\udfff"]}}).encode()), Expect("echo", "s2", "\ud800", ["\udfff"])), "binary"))
        def check(case: tuple[tuple[bytes, Expect], str]) -> None:
            (frame, expect), kind = case
            event(f"{expect.answer} {expect.why}".strip())
            ws.send(frame, text=kind == "text")
            sentinel = f"sentinel-{next(counter)}"
            send(ws, "client-message", {"t": "sentinel"}, sentinel)
            check_answer(expect, answers_until(ws, sentinel))

        check()
        assert ws.close_code is None  # still open: never closed 1011 (or at all)
    with connect(rtvi_url(server)) as fresh:
        assert ready(fresh, "fresh") == ["bot-ready"]
    assert not errors_logged, [r.getMessage() for r in errors_logged]

