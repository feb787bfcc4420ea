"""``--user-audio vad`` on ``/rtvi``, spoken to by a Python client streaming a synthetic microphone in real time:
the utterances begin and end with the voice, the dashboard's audio quality is the audio's (a muted and a clipping
microphone show as poor), ``send-text`` is refused, audio that cannot be read is said once."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from conftest import run
from test_rtvi import kinds, receive, rtvi_url, send
from voice_signals import RATE, Recording, quick_bot, recording
from websockets.asyncio.client import ClientConnection, connect

from pipesim.live import LiveServer
from pipesim.live.vad import HANGOVER_MS, START_MS

CHUNK_S = 0.04  # a client sends its microphone every 40 ms
POOR = quick_bot().quality.poor_threshold


def audio_frame(pcm: bytes, sample_rate: int = RATE, channels: int = 1) -> bytes:
    """A ``pipecat.Frame{audio: AudioRawFrame{audio, sample_rate, num_channels}}``, as the client encodes it."""
    def varint(v: int) -> bytes:
        out = bytearray()
        while v > 0x7F:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        return bytes(out + bytes([v]))

    inner = b"\x1a" + varint(len(pcm)) + pcm + b"\x20" + varint(sample_rate) + b"\x28" + varint(channels)
    return b"\x12" + varint(len(inner)) + inner


async def stream(ws: ClientConnection, rec: Recording) -> None:
    """The recording as a microphone sends it: a chunk every 40 ms of wall time."""
    step = round(CHUNK_S * RATE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for k, i in enumerate(range(0, len(rec.samples), step)):
        await ws.send(audio_frame(rec.samples[i:i + step].tobytes()))
        await asyncio.sleep(max(0.0, started + (k + 1) * CHUNK_S - loop.time()))


async def session(rec: Recording, after: float = 0.5) -> tuple[list[dict[str, Any]], Any, Any]:
    """Serve ``user_audio="vad"``, stream ``rec`` into one RTVI session; the messages, turns and connection."""
    async with LiveServer(quick_bot(), port=0, speed=1.0, user_audio="vad") as server, \
            connect(rtvi_url(server)) as ws:
        await send(ws, "client-ready", {}, "r")
        messages = await receive(ws, until="bot-ready")
        reader = asyncio.ensure_future(receive(ws))
        await stream(ws, rec)
        await asyncio.sleep(after)
        await send(ws, "disconnect-bot")
        messages += await reader
        return messages, server.sim.trace.turns_frame(), server.rtvi.connections["rtvi-1"]


def states(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed's ``pipeline_state_update`` messages (what the dashboard shows) among the server-messages."""
    return [m["data"] for m in messages if m["type"] == "server-message"
            and m["data"].get("type") == "pipeline_state_update"]


def test_two_utterances_are_two_turns_ending_one_hangover_after_the_voice() -> None:
    rec = recording(np.random.default_rng(8), [("silence", [0.6]), ("speech", [0.3, 0.1, 0.4]), ("silence", [1.6]),
                                               ("speech", [0.5, 0.08, 0.3, 0.1, 0.3]), ("silence", [0.8])],
                    noise_dbfs=-70.0)
    messages, turns, conn = run(session(rec))
    assert kinds(messages).count("user-started-speaking") == 2 == kinds(messages).count("user-stopped-speaking")
    assert len(turns) == 2 and turns["outcome"].tolist() == ["complete", "complete"], turns
    (a1, b1), (a2, b2) = rec.utterances
    hangover, start = HANGOVER_MS / 1000, START_MS / 1000
    slack = 0.15  # a frame, a chunk of 40 ms and the event loop
    # The clock is speed 1: simulated seconds are the recording's, from an unknown origin. Anchored at the
    # first start (the voice plus the start delay), each end is one hangover after the voice stopped.
    origin = turns["speech_start"].iloc[0] - start - a1
    for (_, ended), speech_end in zip(rec.utterances, turns["speech_end"], strict=True):
        assert ended + hangover - slack <= speech_end - origin <= ended + hangover + slack
    assert turns["speech_start"].iloc[1] - origin == pytest.approx(a2 + start, abs=slack)
    assert turns["utterance_duration"].tolist() == pytest.approx([b1 - a1 + hangover - start,
                                                                  b2 - a2 + hangover - start], abs=2 * slack)
    assert (turns["audio_quality"] > 0.9).all()  # a clean voice at -20 dBFS
    assert turns["audio_bytes"].tolist() == pytest.approx((turns["utterance_duration"] * 2 * RATE).tolist(),
                                                           rel=0.15)
    assert conn.unheard == 0 and conn.errors == 0


@pytest.mark.parametrize(("gain_db", "muted"), [(30.0, False), (-100.0, True)], ids=["clipping", "muted"])
def test_a_clipping_or_a_muted_microphone_shows_as_poor_audio_on_the_dashboard(gain_db: float, muted: bool) -> None:
    rec = recording(np.random.default_rng(9), [("silence", [0.4]), ("speech", [0.4, 0.1, 0.4]), ("silence", [0.6])],
                    level_dbfs=-20.0 + gain_db)
    messages, turns, _conn = run(session(rec))
    qualities = [m["metadata"]["audio_quality"] for m in states(messages) if m["event"] == "audio"]
    assert qualities and qualities[-1] < POOR, qualities
    if muted:  # nobody was heard speaking: a muted microphone, at quality 0
        assert "user-started-speaking" not in kinds(messages) and len(turns) == 0
        assert qualities == [0.0]
    else:
        assert len(turns) == 1 and turns["audio_quality"].iloc[0] < POOR


def test_send_text_is_refused_and_unreadable_audio_is_said_once() -> None:
    async def main() -> list[dict[str, Any]]:
        async with LiveServer(quick_bot(), port=0, speed=1.0, user_audio="vad") as server, \
                connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await receive(ws, until="bot-ready")
            await send(ws, "send-text", {"content": "hello"}, "t1")
            out = await receive(ws, until="error-response")
            for _ in range(3):
                await ws.send(audio_frame(b"\x00\x00" * 160, sample_rate=0))
            await send(ws, "client-message", {"t": "ping"}, "p")
            out += await receive(ws, until="server-response")
            assert server.rtvi.connections["rtvi-1"].deaf
            return out

    messages = run(main())
    refused = next(m for m in messages if m["type"] == "error-response")
    assert refused["id"] == "t1" and "real voice" in refused["data"]["error"]
    errors = [m["data"] for m in messages if m["type"] == "error"]
    assert errors == [{"error": "microphone audio cannot be heard: audio sample_rate must be 8000..384000 Hz, got 0;"
                                " its audio is ignored from now on", "fatal": False}]


@pytest.mark.pipesim(scenario="frontend_demo", user_audio="vad")
def test_the_pytest_fixture_serves_microphones_when_asked(pipesim_server: Any) -> None:
    bg = pipesim_server.background
    assert bg.call(lambda: bg.server.model.user_audio) == "vad"


def test_an_unknown_user_audio_is_one_line() -> None:
    with pytest.raises(ValueError, match="^user_audio must be one of scenario, vad, got 'mic'$"):
        LiveServer(quick_bot(), port=0, user_audio="mic")


def test_a_microphone_still_streaming_for_a_forgotten_session_changes_nothing() -> None:
    from pipesim.live.source import LiveModel
    from pipesim.live.vad import Heard

    model = LiveModel(quick_bot(), user_audio="vad")
    heard = [Heard(kind, 1.0, 1.0, 3200, 0.9, -20.0, 0.0) for kind in ("started", "speaking", "ended", "muted")]
    assert model.hear("rtvi-9", heard) == 0 and len(model.sim.trace.events_frame()) == 0
