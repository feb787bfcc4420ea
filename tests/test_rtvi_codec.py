"""The RTVI binary framing (``pipesim.live.rtvi_codec``) against bytes made by the real JS transport.

``tests/data/rtvi_frames.json`` was written once by ``tests/rtvi_e2e/golden.mjs`` with the pinned
``@pipecat-ai/websocket-transport`` 1.7.1's own ``ProtobufFrameSerializer``: pipesim must encode the same
messages and the same bot audio to the same bytes (whose samples the transport's own decoder read back as
they were) and decode them back, and refuse malformed frames with one clear message.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipesim.errors import ProtocolError
from pipesim.live.bot_audio import NUM_CHANNELS, SAMPLE_RATE
from pipesim.live.rtvi_codec import decode_frame, encode_audio, encode_message

GOLDEN = json.loads((Path(__file__).parent / "data" / "rtvi_frames.json").read_text(encoding="utf-8"))["frames"]
MESSAGES = [f for f in GOLDEN if f["kind"] == "message"]
AUDIO = [f for f in GOLDEN if f["kind"] == "audio"]
(BOT_AUDIO,) = [f for f in GOLDEN if f["kind"] == "bot-audio"]


@pytest.mark.parametrize("frame", MESSAGES, ids=lambda f: json.loads(f["json"])["type"])
def test_encodes_a_message_to_the_js_transports_bytes(frame: dict) -> None:
    assert encode_message(json.loads(frame["json"])).hex() == frame["hex"]


@pytest.mark.parametrize("frame", MESSAGES, ids=lambda f: json.loads(f["json"])["type"])
def test_decodes_the_js_transports_message_frames(frame: dict) -> None:
    decoded = decode_frame(bytes.fromhex(frame["hex"]))
    assert decoded.kind == "message"
    assert decoded.message == json.loads(frame["json"])


def test_decodes_the_js_transports_audio_frame() -> None:
    (frame,) = AUDIO
    decoded = decode_frame(bytes.fromhex(frame["hex"]))
    assert (decoded.kind, decoded.audio_bytes, decoded.sample_rate, decoded.num_channels) == (
        "audio", frame["audio_bytes"], frame["sample_rate"], frame["num_channels"])


def test_encodes_the_bots_audio_to_the_js_transports_bytes_which_its_decoder_reads_back() -> None:
    pcm = np.array(BOT_AUDIO["samples"], dtype="<i2").tobytes()
    assert (BOT_AUDIO["sample_rate"], BOT_AUDIO["num_channels"]) == (SAMPLE_RATE, NUM_CHANNELS)
    assert encode_audio(pcm, SAMPLE_RATE, NUM_CHANNELS).hex() == BOT_AUDIO["hex"]
    assert (BOT_AUDIO["decoded_type"], BOT_AUDIO["decoded_samples"]) == ("audio", BOT_AUDIO["samples"])


@given(st.binary(max_size=4000).filter(lambda b: len(b) % 2 == 0), st.integers(1, 2**32 - 1), st.integers(1, 8))
def test_any_audio_round_trips(pcm: bytes, rate: int, channels: int) -> None:
    decoded = decode_frame(encode_audio(pcm, rate, channels))
    assert (decoded.kind, decoded.audio_bytes, decoded.sample_rate, decoded.num_channels) == (
        "audio", len(pcm), rate, channels)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=20)


@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_round_trip(envelope: dict) -> None:
    assert decode_frame(encode_message(envelope)).message == envelope


def _pairs_a_surrogate(text: str) -> bool:
    """Whether a high surrogate stands right before a low one: in JSON (and in JS) that is one character."""
    return any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in itertools.pairwise(text))


@given(st.text(st.characters(codec=None, categories=["Cs", "Ll", "So"]), min_size=1, max_size=8)
       .filter(lambda text: not _pairs_a_surrogate(text)))
def test_lone_surrogates_are_escaped_as_json_stringify_does_and_read_back(text: str) -> None:
    frame = encode_message({"t": text})
    frame[4:].decode("utf-8")  # valid UTF-8, whatever the text held
    assert decode_frame(frame).message == {"t": text}


def test_a_high_surrogate_before_a_low_one_reads_back_as_the_one_character_they_spell() -> None:
    # As JSON.parse reads "\ud800\udc00": a Python string holding the two halves apart is not a JS string
    # (hypothesis found this; a lone surrogate, which JS strings can hold, reads back as itself, above).
    frame = encode_message({"t": "a\ud800\udc00b"})
    frame[4:].decode("utf-8")
    assert decode_frame(frame).message == {"t": "a\U00010000b"}


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_one_protocol_error(data: bytes) -> None:
    try:
        decoded = decode_frame(data)
    except ProtocolError as exc:
        assert str(exc).startswith("pipecat.") and "\n" not in str(exc)
    else:
        assert decoded.kind in ("text", "audio", "transcription", "message")


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "no text, audio, transcription or message field"),
    (b"\x22\x05\x0a\x03", "field 4 says 5 bytes, only 2 left"),  # 5 bytes promised, 2 there
    (b"\x22\x03\x0a\x01[", "message.data is not JSON"),
    (b"\x22\x04\x0a\x02[]", "JSON list, not an object"),
    (b"\x22\x03\x0a\x01\xff", "not UTF-8"),
    (b"\x20\x01", "field 4 (message) is not length-delimited"),
    (b"\xff" * 11, "varint longer than 10 bytes"),
    (b"\x23", "unsupported wire type 3"),
    (b"\x22\x8f\x27\x0a\x8c\x27" + b"9" * 5004, "an integer of 5004 digits"),  # Python's limit is 4300
    (b"\x22\xa0\x01\x0a\x9d\x01" + b"[" * 78 + b"]" * 79, "nested deeper than 32 levels"),
])
def test_malformed_frames_say_what_is_wrong(data: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError, match="^pipecat") as info:
        decode_frame(data)
    assert expected in str(info.value)
