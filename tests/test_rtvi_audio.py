"""The bot's audio on ``/rtvi`` (``pipesim.live.rtvi_audio``, the voice ``pipesim.live.bot_audio``): frames while
the bot speaks, in the format and pace of Pipecat's WebSocket transport, speech-like and deterministic, cut
at once by a barge-in or a pause, under the slow-client rule, and off with ``--no-bot-audio``.

The real client's side (playback, ``onRemoteAudioLevel``) is in tests/test_rtvi_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_rtvi import rtvi_url, scenario, send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from pipesim.live import LiveServer
from pipesim.live.bot_audio import FRAME_S, FRAME_SAMPLES, NUM_CHANNELS, SAMPLE_RATE, BotVoice, syllable_count
from pipesim.live.rtvi_audio import LEAD_S
from pipesim.live.rtvi_codec import decode_frame, encode_audio, encode_message

WORDS = ["Sure,", "your", "order", "ships", "today", "and", "should", "arrive", "by", "Friday."]


async def listen(ws: ClientConnection, until: str | None = None, seconds: float = 60.0) -> list[dict[str, Any]]:
    """Everything the server sends, as ``{"t": wall time, "type": message type or "audio", ...}``, up to a
    message of type ``until`` (included), the socket's close, or ``seconds``."""
    out: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                raw = await ws.recv()
                assert isinstance(raw, bytes), "RTVI frames are binary"
                frame = decode_frame(raw)
                if frame.kind == "audio":
                    pcm = raw[-6 - frame.audio_bytes:-6]  # (sample_rate and num_channels: 6 bytes after it)
                    assert encode_audio(pcm, frame.sample_rate, frame.num_channels) == raw
                    out.append({"t": time.monotonic(), "type": "audio", "pcm": pcm, "bytes": frame.audio_bytes,
                                "rate": frame.sample_rate, "channels": frame.num_channels})
                    continue
                assert frame.message is not None
                out.append({"t": time.monotonic(), "type": frame.message["type"]})
                if frame.message["type"] == until:
                    return out
    except (ConnectionClosed, TimeoutError):
        return out


def spoken(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The audio frames of each stretch from bot-started-speaking to bot-stopped-speaking; asserts that no
    frame arrives outside one."""
    stretches: list[list[dict[str, Any]]] = []
    speaking = False
    for e in events:
        if e["type"] == "bot-started-speaking":
            speaking = True
            stretches.append([])
        elif e["type"] == "bot-stopped-speaking":
            speaking = False
        elif e["type"] == "audio":
            assert speaking, "an audio frame outside bot-started-speaking .. bot-stopped-speaking"
            stretches[-1].append(e)
    return stretches


def test_the_bot_speaks_while_its_tts_plays_in_the_transports_format_paced_in_real_time() -> None:
    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with LiveServer(scenario(turns=1), port=0, speed=10) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            events = await listen(ws)
            conn = server.rtvi.connections["rtvi-1"]
            return events, (conn.bot_audio_frames, conn.bot_audio_bytes, conn.speech, server.rtvi.audio.speaking)

    events, (frames, nbytes, speech, speaking) = run(main())
    (stretch,) = spoken(events)
    started = next(e["t"] for e in events if e["type"] == "bot-started-speaking")
    stopped = next(e["t"] for e in events if e["type"] == "bot-stopped-speaking")
    # 40 ms of 24 kHz mono 16-bit PCM a frame, what the transport's player plays.
    assert {(e["bytes"], e["rate"], e["channels"]) for e in stretch} == {(FRAME_SAMPLES * 2, SAMPLE_RATE, NUM_CHANNELS)}
    assert FRAME_SAMPLES / SAMPLE_RATE == FRAME_S == 0.04  # a Pipecat bot's 4 x 10 ms
    # As much audio as the bot spoke on the wall clock (at 10x: each frame fast-forwards 1.2 s of speech; the
    # margins are for this client's own delays in reading on a loaded machine) ...
    wall = stopped - started
    assert wall / FRAME_S - 4 <= len(stretch) <= (wall + LEAD_S) / FRAME_S + 4, (wall, len(stretch))
    # ... and in real time: never more than the lead (and a frame) ahead of what has been played, no bursts.
    for i, e in enumerate(stretch):
        assert i * FRAME_S <= e["t"] - started + LEAD_S + FRAME_S + 0.3, (i, e["t"] - started)
    assert len(stretch) >= 10 and stretch[-1]["t"] - stretch[0]["t"] >= (len(stretch) - 6) * FRAME_S
    assert (frames, nbytes) == (len(stretch), len(stretch) * FRAME_SAMPLES * 2)
    assert speech is None and not speaking  # nothing left speaking once the session ended


def test_same_seed_same_samples_and_another_seed_other_samples() -> None:
    async def first_frames(seed: int) -> list[bytes]:
        async with LiveServer(scenario(turns=2), port=0, speed=30, seed=seed) as server, \
                connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            return [stretch[0]["pcm"] for stretch in spoken(await listen(ws))]

    a, b, c = run(first_frames(11)), run(first_frames(11)), run(first_frames(12))
    assert len(a) == 2 and a == b and a[0] != a[1]  # each turn its own voice, the same every run
    assert c != a


def test_a_voice_is_a_pure_function_of_its_words_its_stream_and_the_frame_asked_for() -> None:
    voice = BotVoice(WORDS, np.random.default_rng(7))
    again = BotVoice(WORDS, np.random.default_rng(7))
    ahead = [voice.frame(n) for n in range(30)]
    assert [again.frame(n) for n in reversed(range(30))][::-1] == ahead  # in any order: the same samples
    assert BotVoice(WORDS, np.random.default_rng(8)).frame(3) != ahead[3]
    assert voice.frame(3, span=FRAME_S * 10) != ahead[3]  # fast-forwarded


def _bursts(pcm: np.ndarray, min_silence: int = SAMPLE_RATE * 8 // 1000) -> list[tuple[int, int]]:
    """(start, end) sample indices of the sounding stretches separated by at least ``min_silence`` zeros (8 ms:
    under the 10 ms a pause between syllables takes, over the runs of zeros within a syllable's onset, where the
    envelope is nearly nothing and its 100 Hz carrier rounds to 0 for a few milliseconds around each zero
    crossing; with 2 ms, hypothesis found such an onset counted as a syllable of its own)."""
    loud = np.flatnonzero(pcm)
    if not len(loud):
        return []
    breaks = np.flatnonzero(np.diff(loud) > min_silence)
    starts = np.concatenate([[loud[0]], loud[breaks + 1]])
    ends = np.concatenate([loud[breaks], [loud[-1]]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@example(words=["a", "a", "aba", "a", "abababa", "aba", "ababa", "ababa", "abababa"], seed=3932)
@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=1, max_size=12), min_size=1,
                max_size=12), st.integers(0, 2**32 - 1))
def test_the_voice_has_a_syllable_per_vowel_group_and_pauses_between_words_at_a_level_a_meter_shows(
        words: list[str], seed: int) -> None:
    voice = BotVoice(words, np.random.default_rng(seed))
    frames = int(voice.duration / FRAME_S) + 1
    once = int((voice.duration - 0.01) * SAMPLE_RATE)  # the words once (the next pass ramps up from 5 ms before)
    pcm = np.frombuffer(b"".join(voice.frame(n) for n in range(frames)), "<i2")[:once]
    bursts = _bursts(pcm)
    assert len(bursts) == sum(syllable_count(w) for w in words) == len(voice.syllables)
    for (_, end), (start, _) in zip(bursts, bursts[1:], strict=False):
        assert start - end >= SAMPLE_RATE * 0.01  # a pause, not a dip
    assert (bursts[-1][1] - len(pcm)) / SAMPLE_RATE < -0.3  # the sentence ends with a pause
    # Loud enough for a meter (peaks -12 to -4 dBFS), never clipping; not a constant tone: it swells and fades.
    peak = np.abs(pcm).max() / 32768
    assert 10 ** (-12 / 20) <= peak <= 10 ** (-4 / 20)
    rms = np.sqrt(np.mean(pcm[: len(pcm) // 240 * 240].reshape(-1, 240).astype(np.float64) ** 2, axis=1))
    assert rms.min() == 0 and rms.max() > 0.08 * 32768 and np.percentile(rms[rms > 0], 10) < rms.max() / 3


def test_a_barge_in_or_a_pause_cuts_the_audio_at_once() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[bool]]:
        async with LiveServer(scenario(turns=3), port=0, speed=4) as server, connect(rtvi_url(server)) as ws, \
                connect(server.url) as seed:
            cut_at_once = []
            await send(ws, "client-ready", {}, "r")
            barge = await listen(ws, until="bot-started-speaking")
            barge += await listen(ws, seconds=0.5)  # the bot talks a while (~7 s at 4x)
            await send(ws, "send-text", {"content": "wait"}, "t1")
            barge += await listen(ws, until="bot-stopped-speaking")
            cut_at_once.append(server.rtvi.connections["rtvi-1"].speech is None)
            barge += await listen(ws, until="bot-started-speaking")  # the user's turn, then the bot again
            pause = await listen(ws, seconds=0.5)
            await seed.send(json.dumps({"type": "conversation_control", "action": "pause", "session_id": "rtvi-1"}))
            pause += await listen(ws, until="bot-stopped-speaking")
            cut_at_once.append(server.rtvi.connections["rtvi-1"].speech is None)
            pause += await listen(ws, seconds=1.0)  # paused: silence
            return barge, pause, cut_at_once

    barge, pause, cut_at_once = run(main())
    assert cut_at_once == [True, True]
    first, _second = spoken(barge)  # (also: no frame between the barge-in's bot-stopped-speaking and the next turn)
    assert len(first) >= 3
    cut = next(i for i, e in enumerate(pause) if e["type"] == "bot-stopped-speaking")
    assert sum(e["type"] == "audio" for e in pause[:cut]) >= 3
    assert [e["type"] for e in pause[cut + 1:] if e["type"] == "audio"] == []


def test_a_paused_clock_sends_no_more_than_the_lead_and_resuming_goes_on() -> None:
    async def main() -> tuple[int, int]:
        async with LiveServer(scenario(turns=1), port=0, speed=4) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await listen(ws, until="bot-started-speaking")
            await listen(ws, seconds=0.3)
            server.pacer.pause()
            await listen(ws, seconds=0.3)  # what was on its way
            paused = await listen(ws, seconds=1.0)
            server.pacer.resume()
            resumed = await listen(ws, seconds=0.6)
            return sum(e["type"] == "audio" for e in paused), sum(e["type"] == "audio" for e in resumed)

    paused, resumed = run(main())
    assert paused == 0  # the bot is frozen mid-word, as everything else
    assert resumed >= 3


def test_a_client_that_does_not_read_the_audio_is_dropped_as_too_slow_and_the_others_hear_on() -> None:
    async def main() -> tuple[int | None, int, int, int]:
        # 20 frames behind is too slow; a small send buffer, so that the queue is where a stall shows soon.
        async with LiveServer(scenario(turns=1), port=0, speed=2, client_queue=20, send_buffer=4096,
                              close_timeout=10) as server, \
                connect(rtvi_url(server)) as stalled, connect(rtvi_url(server)) as reader:
            await stalled.send(encode_message({"label": "rtvi-ai", "type": "client-ready", "id": "s"}))
            await send(reader, "client-ready", {}, "r")
            stalled.transport.pause_reading()  # reads nothing from now on: the server's queue fills
            heard = []
            async with asyncio.timeout(30):
                while server.slow_disconnects == 0:
                    heard += await listen(reader, seconds=0.2)
            stalled.transport.resume_reading()  # to read the close frame
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await stalled.recv()
            before = sum(e["type"] == "audio" for e in heard)
            heard += await listen(reader, seconds=1.0)
            return stalled.close_code, server.slow_disconnects, before, sum(e["type"] == "audio" for e in heard)

    code, slow, before, after = run(main(), timeout=60)
    assert (code, slow) == (1013, 1)
    assert after >= before + 5  # the reader hears on (about 8 frames a second)


def test_rtvi_negotiates_no_compression_and_ws_still_does() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with LiveServer(scenario(), port=0) as server, connect(rtvi_url(server)) as rtvi, \
                connect(server.url) as seed:
            return rtvi.protocol.extensions, seed.protocol.extensions

    rtvi, seed = run(main())
    assert rtvi == [] and [e.name for e in seed] == ["permessage-deflate"]


def test_no_bot_audio_sends_none(tmp_path: Path) -> None:
    scn = tmp_path / "quick.yaml"
    scn.write_text(json.dumps({"name": "quick", "seed": 3, "sessions": {
        "arrivals": {"kind": "at_once", "count": 0}, "turns": 1, "first_speech_delay_s": 0.3,
        "utterance_s": 1.0, "think_time_s": 0.5, "barge_in_probability": 0.0}}), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "serve", str(scn), "--port", "0", "--no-admin",
                             "--speed", "20", "--no-bot-audio"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = json.loads(proc.stdout.readline())["ws"].removesuffix("/ws") + "/rtvi"  # type: ignore[union-attr]
        kinds = []
        with sync_connect(url) as ws:
            ws.send(encode_message({"label": "rtvi-ai", "type": "client-ready", "id": "r", "data": {}}))
            with pytest.raises(ConnectionClosed):
                while True:
                    frame = decode_frame(ws.recv(timeout=30))  # type: ignore[arg-type]
                    kinds.append(frame.kind if frame.message is None else frame.message["type"])
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert "bot-stopped-speaking" in kinds and "audio" not in kinds
