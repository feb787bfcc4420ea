"""Hostile clients, generated: every kind of bad frame and HTTP request gets an answer, never a close or a traceback.

One server runs for each test (in a background thread); a bystander client watches a session of its own.
Hypothesis throws frames at a second connection: JSON values of every shape (nested, huge integers, NaN
and Infinity literals, lone surrogates, long strings), messages that look right with a wrong type in one
field, text and binary frames, invalid UTF-8, sizes around the 64 KiB limit. After each frame a sentinel
(a ``pause`` of a session that does not exist, answered with ``unknown_session``) marks the end of the
answer, so the test sees exactly what the frame caused.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import talking_scenario
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from pipesim.live import BackgroundServer, LiveServer, serve_in_background
from pipesim.protocol import MAX_MESSAGE_BYTES, ConversationControl, ProtocolError, parse_message
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES

QUIET = talking_scenario(name="fuzz", seed=3)
FIELDS = {
    "conversation_control": {"action": "start", "session_id": "fz"},
    "fault_injection": {"fault": "kafka_stall", "service": "llm", "duration_s": 1.0},
}

#: Stands for an integer of 5,000 digits (Python refuses to print those, so they are spliced into the text).
HUGE_INT = "<huge int>"

# JSON values ------------------------------------------------------------------------------------------
texts = st.one_of(
    st.text(max_size=40),                                  # any code point, lone surrogates included
    st.text(st.characters(codec="utf-8"), min_size=1000, max_size=5000),
    st.sampled_from(["", "start", "pause", "stop", "conversation_control", "fault_injection", "disconnect",
                     "pipeline_state_update", "\x00", "\ud800", "\udfff", "x" * 300, "é", "\u202e", "💥"]),
)
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 3601, 2**63, 1e308, 5e-324, HUGE_INT]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=20)
deeply_nested = st.integers(min_value=1, max_value=30_000).map(lambda n: "[" * n + "]" * n)


def encode(value: Any) -> str:
    """JSON text as a client might send it: NaN/Infinity literals, \\uXXXX escapes for lone surrogates."""
    return json.dumps(value).replace(json.dumps(HUGE_INT), "9" * 5000)


@st.composite
def wrong_field(draw: st.DrawFn) -> str:
    """A message of a known type with one field replaced by a value of another type (or left out)."""
    type_name = draw(st.sampled_from(CLIENT_MESSAGE_TYPES))
    message: dict[str, Any] = {"type": type_name, **FIELDS[type_name]}
    field = draw(st.sampled_from(sorted(message)))
    if draw(st.booleans()):
        del message[field]
    else:
        message[field] = draw(json_values)
    return encode(message)


@st.composite
def around_the_limit(draw: st.DrawFn) -> str:
    """A valid-looking control padded to a size just under, at or just over the 64 KiB limit."""
    size = MAX_MESSAGE_BYTES + draw(st.integers(min_value=-3, max_value=3))
    head = '{"type":"conversation_control","action":"pause","session_id":"fz-none","pad":"'
    return head + "x" * (size - len(head) - 2) + '"}'


frames = st.one_of(
    json_values.map(encode),
    wrong_field(),
    deeply_nested,
    around_the_limit(),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),   # maybe invalid UTF-8
    st.binary(max_size=200),
).flatmap(lambda frame: st.tuples(st.just(frame), st.sampled_from(["text", "binary"])))


# Harness ----------------------------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[BackgroundServer[LiveServer]]:
    with serve_in_background(QUIET, port=0, speed=20) as bg:
        yield bg


def receive_until_sentinel(ws: ClientConnection, sentinel: str) -> list[dict[str, Any]]:
    got = []
    while True:
        message = json.loads(ws.recv(timeout=5))
        if message.get("type") == "error" and message.get("session_id") == sentinel:
            return got
        got.append(message)


def expected_for(frame: str | bytes) -> str | None:
    """The error code the frame must get (None: a valid message, which may also succeed)."""
    size = len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame)
    if size > MAX_MESSAGE_BYTES:
        return "too_large"
    try:
        parse_message(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame,
                      allowed=CLIENT_MESSAGE_TYPES)
    except ProtocolError:
        return "bad_message"
    return None


def test_every_hostile_frame_gets_one_error_and_nothing_else_is_disturbed(
        server: BackgroundServer[LiveServer], errors_logged: list[logging.LogRecord]) -> None:
    with connect(server.url + "?session_id=bystander") as bystander, \
            connect(server.url + "?session_id=nothing") as fuzzer:
        bystander.send(json.dumps({"type": "conversation_control", "action": "start", "session_id": "bystander"}))
        counter = iter(range(10**9))
        started: set[str] = set()

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(frames)
        # A valid start of a new session (rare among generated frames, so the run once flaked on it).
        @example(('{"type": "conversation_control", "action": "start", "session_id": "fuzz-new"}', "text"))
        def check(case: tuple[str | bytes, str]) -> None:
            frame, kind = case
            # A valid disconnect fault would close the connections under test: its effect is tested elsewhere.
            assume(b'"disconnect"' not in (frame.encode("utf-8", "surrogatepass") if isinstance(frame, str)
                                          else frame) or expected_for(frame) is not None)
            payload = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
            # A text frame carries the bytes as they are (possibly invalid UTF-8, which the server must
            # answer, not close on); a binary frame the same bytes as binary.
            fuzzer.send(payload, text=kind == "text")
            sentinel = f"sentinel-{next(counter)}"
            fuzzer.send(json.dumps({"type": "conversation_control", "action": "pause", "session_id": sentinel}))
            answer = receive_until_sentinel(fuzzer, sentinel)
            errors = [m for m in answer if m["type"] == "error"]
            expected = expected_for(frame)
            msg = parse_message(payload) if expected is None else None
            if isinstance(msg, ConversationControl):
                # A control that succeeds makes the fuzzer watch its session from now on: its own
                # transitions (session_created, ...) are already in this answer.
                started.add(msg.session_id)
            # Anything else is an update about a session the fuzzer controlled (it watches those).
            assert all(m.get("session_id") in started for m in answer if m["type"] != "error"), answer
            if expected is not None:
                assert len(errors) == 1 and errors[0]["code"] == expected, (frame, answer)
                return
            # A valid message: its effect, or one error saying why not.
            if isinstance(msg, ConversationControl):
                status = server.call(lambda: server.server.sim.manager.status(msg.session_id)
                                     if msg.session_id in server.server.sim.manager else None)
                done = {"start": "active", "pause": "paused", "stop": "stopped"}[msg.action]
                assert (errors == [] and status == done) or (
                    len(errors) == 1 and errors[0]["code"] in ("unknown_session", "illegal_control")), (frame, answer)
            else:
                assert errors == [], (frame, answer)  # a Kafka stall (short, harmless): not acknowledged

        check()
        # The bystander's session ran all along: every seq arrived once, in order, and both stay open.
        seen = []
        while len(seen) < 20:
            seen.append(json.loads(bystander.recv(timeout=5)))
        assert [m["seq"] for m in seen] == list(range(len(seen)))
        assert server.call(lambda: server.server.clients) == 2
    assert not errors_logged, [r.getMessage() for r in errors_logged]


# HTTP ---------------------------------------------------------------------------------------------------
def http_get(port: int, target: bytes, host: bytes = b"127.0.0.1") -> int | None:
    """Send one raw GET (no client-side checks on the target) and return the status code (None: no answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


path_text = st.text(st.characters(exclude_characters=" \r\n\t"), max_size=400)
targets = st.one_of(
    path_text.map(lambda s: ("/" + s).encode("utf-8", "surrogatepass")),
    path_text.map(lambda s: ("/static/" + s).encode("utf-8", "surrogatepass")),
    st.integers(min_value=200, max_value=5000).map(lambda n: b"/static/" + b"a" * n),
    st.sampled_from([b"/static/%00", b"/static/../../etc/passwd", b"/static/..%2f..%2fetc%2fpasswd",
                     b"/static/\xc3\xa9", b"/static/\xff", b"/?x=1", b"/static/index.html?v=2", b"/healthz?",
                     b"/static/", b"/static", b"//", b"/static/./index.html", b"/index.html#x", b"*"]),
)


def test_any_get_request_is_answered_without_a_traceback(
        server: BackgroundServer[LiveServer], errors_logged: list[logging.LogRecord]) -> None:
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(targets)
    def check(target: bytes) -> None:
        status = http_get(server.port, target)
        if target.isascii():
            assert status in (200, 404, 426), target
        else:  # not HTTP (a request line is ASCII; browsers percent-encode): the library hangs up
            assert status is None, target

    check()
    assert http_get(server.port, b"/static/index.html") == 200
    assert http_get(server.port, b"/static/" + b"a" * 300) == 404
    assert not errors_logged, [r.getMessage() for r in errors_logged]
