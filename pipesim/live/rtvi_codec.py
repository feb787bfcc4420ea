"""The binary framing of Pipecat's WebSocket transport: a protobuf ``pipecat.Frame``, hand-written.

``@pipecat-ai/websocket-transport`` (1.7.1) sends and expects binary WebSocket frames, each one protobuf
message ``pipecat.Frame`` holding one of ``text`` (field 1), ``audio`` (2, an ``AudioRawFrame``:
``id`` 1, ``name`` 2, ``audio`` 3, ``sample_rate`` 4, ``num_channels`` 5, ``pts`` 6), ``transcription``
(3) or ``message`` (4, a ``MessageFrame`` whose field 1 ``data`` is the RTVI envelope as a JSON string).
pipesim needs only three of them, so the codec is a few lines of varints and length-delimited fields rather
than a protobuf runtime: :func:`encode_message` writes field 4 -> field 1, :func:`encode_audio` the bot's
audio (field 2), :func:`decode_frame` reads any frame (unknown fields are skipped, as protobuf requires) and
returns the message's JSON object or, for microphone audio, how much audio arrived. Anything else raises
:class:`~pipesim.errors.ProtocolError` with one line saying what is wrong.

The golden bytes in ``tests/data/rtvi_frames.json`` come from the real transport's encoder, and the samples
its decoder reads from them (``tests/rtvi_e2e/golden.mjs``).

>>> frame = encode_message({"label": "rtvi-ai", "type": "bot-ready", "id": "1", "data": {"version": "2.1.0"}})
>>> frame[:2]
b'"L'
>>> decode_frame(frame).message["type"]
'bot-ready'
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from pipesim import _jsonsafe
from pipesim.errors import ProtocolError

#: ``pipecat.Frame``'s fields (a oneof) and the ones pipesim reads inside them.
FRAME_TEXT, FRAME_AUDIO, FRAME_TRANSCRIPTION, FRAME_MESSAGE = 1, 2, 3, 4
MESSAGE_DATA = 1
AUDIO_NAME, AUDIO_SAMPLES, AUDIO_SAMPLE_RATE, AUDIO_CHANNELS = 2, 3, 4, 5
_KINDS = {FRAME_TEXT: "text", FRAME_AUDIO: "audio", FRAME_TRANSCRIPTION: "transcription", FRAME_MESSAGE: "message"}
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class Decoded:
    """One inbound frame: its ``kind`` and, for ``message``, the JSON object; for ``audio``, its samples (16-bit
    PCM, interleaved), their size, rate and channels."""

    kind: str
    message: dict[str, Any] | None = None
    audio_bytes: int = 0
    sample_rate: int = 0
    num_channels: int = 0
    audio: bytes = b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def encode_message(envelope: dict[str, Any]) -> bytes:
    """The binary frame carrying one RTVI message: ``Frame{message: MessageFrame{data: json}}``.

    JSON as the JS transport writes it (``JSON.stringify``: compact, non-ASCII kept as UTF-8, a lone
    surrogate, which UTF-8 cannot hold, escaped as ``\\uXXXX``). NaN and infinities raise ``ValueError``
    (JSON has no such numbers): check what a client sent before echoing it
    (:func:`pipesim._jsonsafe.unsendable`).

    >>> encode_message({"type": "x"})
    b'"\\x0e\\n\\x0c{"type":"x"}'
    >>> encode_message({"t": "\\ud800"})[4:]
    b'{"t":"\\\\ud800"}'
    """
    data = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8", "backslashreplace")
    return _length_delimited(FRAME_MESSAGE, _length_delimited(MESSAGE_DATA, data))


def encode_audio(pcm: bytes, sample_rate: int, num_channels: int) -> bytes:
    """The binary frame carrying audio: ``Frame{audio: AudioRawFrame{name: "audio", audio: pcm, sample_rate,
    num_channels}}``, byte for byte as the JS transport's ``serializeAudio`` writes it (``id`` 0 and no
    ``pts``: proto3 leaves them out). ``pcm``: 16-bit little-endian samples, channels interleaved.

    >>> encode_audio(b"\\x01\\x00", 24000, 1)
    b'\\x12\\x11\\x12\\x05audio\\x1a\\x02\\x01\\x00 \\xc0\\xbb\\x01(\\x01'
    >>> decode_frame(encode_audio(b"\\x00" * 1920, 24000, 1)).audio_bytes
    1920
    """
    head, tail = _audio_framing(len(pcm), sample_rate, num_channels)
    return head + pcm + tail


@functools.lru_cache(maxsize=16)
def _audio_framing(size: int, sample_rate: int, num_channels: int) -> tuple[bytes, bytes]:
    """What comes before and after ``size`` bytes of samples in :func:`encode_audio`'s frame (the bot's frames
    all have the same size: computed once)."""
    tail = (_varint(AUDIO_SAMPLE_RATE << 3 | _VARINT) + _varint(sample_rate)
            + _varint(AUDIO_CHANNELS << 3 | _VARINT) + _varint(num_channels))
    name = _length_delimited(AUDIO_NAME, b"audio")
    samples_key = _varint(AUDIO_SAMPLES << 3 | _LENGTH_DELIMITED) + _varint(size)
    inner = len(name) + len(samples_key) + size + len(tail)
    return _varint(FRAME_AUDIO << 3 | _LENGTH_DELIMITED) + _varint(inner) + name + samples_key, tail


def _fields(data: bytes, where: str) -> dict[int, bytes | int]:
    """The fields of one protobuf message (last occurrence wins); raises ProtocolError if malformed."""
    fields: dict[int, bytes | int] = {}
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= end:
                raise ProtocolError(f"{where}: truncated varint at byte {pos}")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 64:
                raise ProtocolError(f"{where}: varint longer than 10 bytes at byte {pos}")

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtocolError(f"{where}: field number 0 at byte {pos}")
        if wire == _VARINT:
            fields[field] = varint()
        elif wire == _LENGTH_DELIMITED:
            size = varint()
            if size > end - pos:
                raise ProtocolError(f"{where}: field {field} says {size} bytes, only {end - pos} left")
            fields[field] = data[pos:pos + size]
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if size > end - pos:
                raise ProtocolError(f"{where}: field {field} truncated")
            fields[field] = data[pos:pos + size]
            pos += size
        else:
            raise ProtocolError(f"{where}: unsupported wire type {wire} for field {field}")
    return fields


def decode_frame(data: bytes) -> Decoded:
    """Read one binary frame of the WebSocket transport (see the module's docstring).

    >>> decode_frame(b"\\x12\\x04\\x1a\\x02\\x00\\x00").audio_bytes
    2
    >>> decode_frame(b"\\x22\\x03\\x0a\\x01x")
    Traceback (most recent call last):
    ...
    pipesim.errors.ProtocolError: pipecat.Frame: message.data is not JSON (Expecting value at char 0)
    """
    frame = _fields(data, "pipecat.Frame")
    kinds = [field for field in frame if field in _KINDS]
    if not kinds:
        raise ProtocolError("pipecat.Frame: no text, audio, transcription or message field")
    field = kinds[-1]  # a oneof: the last one on the wire wins
    payload = frame[field]
    if not isinstance(payload, bytes):
        raise ProtocolError(f"pipecat.Frame: field {field} ({_KINDS[field]}) is not length-delimited")
    if field == FRAME_AUDIO:
        audio = _fields(payload, "pipecat.AudioRawFrame")
        samples = audio.get(AUDIO_SAMPLES, b"")
        samples = samples if isinstance(samples, bytes) else b""
        rate, channels = audio.get(AUDIO_SAMPLE_RATE, 0), audio.get(AUDIO_CHANNELS, 0)
        return Decoded("audio", audio_bytes=len(samples), sample_rate=rate if isinstance(rate, int) else 0,
                       num_channels=channels if isinstance(channels, int) else 0, audio=samples)
    if field != FRAME_MESSAGE:
        return Decoded(_KINDS[field])
    raw = _fields(payload, "pipecat.MessageFrame").get(MESSAGE_DATA, b"")
    if not isinstance(raw, bytes):
        raise ProtocolError("pipecat.Frame: message.data is not a string")
    try:
        message = _jsonsafe.loads(raw)  # refuses deep nesting and huge integers before they crash the decoder
    except UnicodeDecodeError:
        raise ProtocolError("pipecat.Frame: message.data is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"pipecat.Frame: message.data is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"pipecat.Frame: message.data is JSON {type(message).__name__}, not an object")
    return Decoded("message", message=message)


def journal_view(raw: bytes) -> dict[str, Any] | None:
    """An inbound frame as the admin API's journal shows it: the message's envelope; None for microphone audio
    (fifty frames a second: not journaled); a frame that cannot be read, as ``{"raw": ...}`` (cut).

    >>> journal_view(encode_message({"label": "rtvi-ai", "type": "client-ready"}))
    {'label': 'rtvi-ai', 'type': 'client-ready'}
    >>> journal_view(encode_audio(b"\\x00\\x00", 16000, 1)) is None
    True
    """
    try:
        frame = decode_frame(raw)
    except ProtocolError:
        return {"raw": raw[:200].decode("utf-8", "replace")}
    return None if frame.kind == "audio" else frame.message or {"kind": frame.kind}
