"""End to end: the real published Pipecat client in headless Chromium against pipesim's ``/rtvi``.

``tests/rtvi_e2e/`` pins ``@pipecat-ai/client-js`` 1.13.1, ``@pipecat-ai/websocket-transport`` 1.7.1 and
esbuild (``package-lock.json``; ``npm ci`` here when ``node_modules`` is missing or stale). The test bundles
``page.js`` (``PipecatClient`` + ``WebSocketTransport`` + ``WavMediaManager``) into a temp dir, serves it
from a :class:`~pipesim.live.LiveServer` on port 0 (same origin: the access checks pass as they are) and
opens it in Debian's Chromium with a fake microphone; every request not to localhost is aborted.

It proves: ``connect()`` resolves with the RTVI version the client speaks; a whole turn's callbacks arrive
in order; the microphone's audio frames reach pipesim with no error; a ``service_outage`` fault from a seed
client makes ``onError`` fire (not fatal); the bot's audio reaches the client's player while the bot speaks,
``onRemoteAudioLevel`` is above zero then and near zero in between, and the callbacks are as without audio.
Skipped when node/npm or Chromium is missing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, chromium_trusting, npm_modules, talking_scenario
from test_rtvi import TURN, turns_in_order
from voice_signals import quick_bot, recording
from websockets.sync.client import connect

from pipesim.live.bot_audio import FRAME_SAMPLES
from pipesim.live.rtvi import RTVI_VERSION
from pipesim.live.vad import HANGOVER_MS, START_MS

HERE = Path(__file__).resolve().parent / "rtvi_e2e"
#: A fake microphone, allowed without asking; the bot's audio plays without a click.
MEDIA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              "--autoplay-policy=no-user-gesture-required"]
TIMEOUT_S = 60.0  # generous: two cores shared by many processes
#: Callback -> the RTVI message that fires it.
CALLBACKS = {"onUserStartedSpeaking": "user-started-speaking", "onUserStoppedSpeaking": "user-stopped-speaking",
             "onUserTranscript": "user-transcription", "onBotLlmStarted": "bot-llm-started",
             "onBotLlmText": "bot-llm-text", "onBotLlmStopped": "bot-llm-stopped",
             "onBotTtsStarted": "bot-tts-started", "onBotTtsStopped": "bot-tts-stopped",
             "onBotStartedSpeaking": "bot-started-speaking", "onBotStoppedSpeaking": "bot-stopped-speaking",
             "onBotOutput": "bot-output"}
#: No background sessions; the RTVI session's user waits 2 s (the microphone streams meanwhile), then talks.
SCENARIO = talking_scenario(name="rtvi_e2e", seed=3,
                            sessions={"first_speech_delay_s": 2.0, "utterance_s": 1.0, "think_time_s": 1.0})

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``tests/rtvi_e2e/node_modules`` as its ``package-lock.json`` pins it (``npm ci`` when missing/stale)."""
    return npm_modules(HERE, ".bin/esbuild")


def test_the_pinned_client_speaks_the_rtvi_version_pipesim_announces(node_modules: Path) -> None:
    proc = subprocess.run(["node", "--input-type=module", "-e", "import { RTVI_PROTOCOL_VERSION as v } from "
                           "'@pipecat-ai/client-js'; console.log(v)"], cwd=HERE, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == RTVI_VERSION, "the pinned client changed its RTVI version: update RTVI_VERSION"


@pytest.fixture(scope="module")
def site(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rtvi-page")
    proc = subprocess.run([str(node_modules / ".bin" / "esbuild"), "page.js", "--bundle", "--format=iife",
                           f"--outfile={out / 'page.js'}", "--log-level=warning"], cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (out / "index.html").write_text('<!doctype html><meta charset="utf-8"><title>rtvi</title>'
                                    '<script src="/static/page.js"></script>', encoding="utf-8")
    return out


@contextlib.contextmanager
def browser_page(site: Path, scenario: Any = SCENARIO, speed: float = 2.0, tls: Any = None,
                 chromium_args: tuple[str, ...] = (), **server: Any) -> Iterator[tuple[Any, Any, list[str]]]:
    """A live server serving ``site`` (over ``https://`` with ``tls``), and the page open in headless Chromium
    (trusting ``tls``'s certificate, local requests only)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run `make browser` (scripts/install-browser.sh, as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) is not installed")
    from pipesim.live import serve_in_background

    bg = serve_in_background(scenario, port=0, speed=speed, static_dir=site, tls=tls, **server)
    problems: list[str] = []
    blocked: list[str] = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
                *CHROMIUM_ARGS, *MEDIA_ARGS, *(chromium_trusting(tls) if tls is not None else []), *chromium_args])
            context = browser.new_context()

            def local_only(route: Any) -> None:
                if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route("**/*", local_only)
            pg = context.new_page()
            pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            pg.goto(bg.http_url)
            yield pg, bg, problems
            context.close()
            browser.close()
    finally:
        bg.stop()
    assert not problems, "\n".join(problems)
    assert not blocked, f"the page asked for non-local resources: {blocked}"


@pytest.fixture
def page(site: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, list[str]]]:
    """The page, opened from a live server; parametrized with ``"tls"`` (indirect), over ``https://`` from a
    server with the test session's certificate, in a Chromium that trusts it (a pin of its key)."""
    tls = request.getfixturevalue("tls_files") if getattr(request, "param", None) == "tls" else None
    with browser_page(site, tls=tls) as opened:
        yield opened


def _events(pg: Any) -> list[dict[str, Any]]:
    return pg.evaluate("() => JSON.parse(JSON.stringify(window.rtvi.events))")


def _wait_for(pg: Any, name: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        events = _events(pg)
        if sum(1 for e in events if e["name"] == name) >= count:
            return events
        pg.wait_for_timeout(100)
    raise AssertionError(f"no {name} (x{count}) within {TIMEOUT_S} s; got {[e['name'] for e in _events(pg)]}")


def test_the_real_pipecat_client_connects_hears_a_turn_streams_audio_and_sees_a_fault(page: Any) -> None:
    pg, bg, _problems = page
    url = f"ws://127.0.0.1:{bg.port}/rtvi"
    pg.evaluate("(url) => { window.rtvi.connect(url); }", url)
    events = _wait_for(pg, "connect-resolved")
    ready = next(e for e in events if e["name"] == "connect-resolved")["data"]
    assert ready["version"] == RTVI_VERSION == pg.evaluate("() => window.rtvi.clientVersion")
    assert ready["about"]["session_id"] == "rtvi-1"

    # A whole turn, in order; the seed's state on the server-message channel alongside.
    events = _wait_for(pg, "onBotStoppedSpeaking")
    turn = [CALLBACKS[e["name"]] for e in events if e["name"] in CALLBACKS]
    assert turns_in_order(turn[:len(TURN)], 1), turn
    seed = [e["data"] for e in events if e["name"] == "onServerMessage"]
    assert seed[0]["type"] == "session_created" and seed[0]["session_id"] == "rtvi-1"
    assert any(e["name"] == "onMetrics" and "ttfb" in e["data"] for e in events)

    # The microphone streams (about 31 frames/s) and pipesim takes it without a word of complaint.
    conn = bg.call(lambda: bg.server.rtvi.connections["rtvi-1"])
    frames, nbytes, errors = bg.call(lambda: (conn.audio_frames, conn.audio_bytes, conn.errors))
    assert frames >= 31 and nbytes > 0 and errors == 0
    assert not any(e["name"] in ("onError", "onMessageError") for e in events)

    # The dashboard sees the session; a fault from a seed client makes onError fire, not fatally.
    with connect(bg.url) as seed_client:
        seed_client.send(json.dumps({"type": "fault_injection", "fault": "service_outage", "service": "stt",
                                     "duration_s": 120}))
    events = _wait_for(pg, "onError")
    error = next(e for e in events if e["name"] == "onError")["data"]
    assert error["type"] == "error" and error["data"]["fatal"] is False and "stt" in error["data"]["error"]
    assert bg.call(lambda: bg.server.sim.manager.status("rtvi-1")) == "active"

    pg.evaluate("() => window.rtvi.disconnect()")
    _wait_for(pg, "onDisconnected")
    deadline = time.monotonic() + 10
    while bg.call(lambda: bg.server.sim.manager.status("rtvi-1")) != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bg.call(lambda: bg.server.sim.manager.status("rtvi-1")) == "stopped"


@pytest.mark.parametrize("page", ["tls"], indirect=True)
def test_the_real_pipecat_client_over_wss_with_the_ca_trusted(page: Any) -> None:
    """A page of ``https://`` (as a frontend configured for ``wss`` is served) connects to ``wss://.../rtvi``:
    the same client, the same callbacks, the microphone's frames, over TLS."""
    pg, bg, _problems = page
    assert bg.http_url.startswith("https://") and pg.evaluate("() => location.protocol") == "https:"
    url = bg.url.removesuffix("/ws") + "/rtvi"
    assert url.startswith("wss://")
    pg.evaluate("(url) => { window.rtvi.connect(url); }", url)
    events = _wait_for(pg, "connect-resolved")
    ready = next(e for e in events if e["name"] == "connect-resolved")["data"]
    assert ready["version"] == RTVI_VERSION and ready["about"]["session_id"] == "rtvi-1"
    events = _wait_for(pg, "onUserStoppedSpeaking")
    assert [e["name"] for e in events if e["name"] in CALLBACKS][:2] == ["onUserStartedSpeaking",
                                                                          "onUserStoppedSpeaking"]
    conn = bg.call(lambda: bg.server.rtvi.connections["rtvi-1"])
    assert bg.call(lambda: (conn.audio_frames > 0, conn.errors)) == (True, 0)
    assert not any(e["name"] in ("onError", "onMessageError", "connect-failed") for e in events)


def test_the_real_client_plays_the_bots_audio_and_its_remote_level_follows_the_bot(page: Any) -> None:
    pg, bg, _problems = page
    pg.evaluate("(url) => { window.rtvi.connect(url); }", f"ws://127.0.0.1:{bg.port}/rtvi")
    events = _wait_for(pg, "onBotStoppedSpeaking", 2)  # two turns: the bot speaks, is silent, speaks again
    audio = pg.evaluate("() => JSON.parse(JSON.stringify(window.rtvi.audio))")
    sent = bg.call(lambda: bg.server.rtvi.connections["rtvi-1"].bot_audio_frames)

    # The callbacks are those of two whole turns, in order, as without audio; nothing went wrong.
    turn = [CALLBACKS[e["name"]] for e in events if e["name"] in CALLBACKS]
    assert turns_in_order(turn[:2 * len(TURN)], 2), turn
    assert not any(e["name"] in ("onError", "onMessageError") for e in events)
    # Every frame the bot sent reached the transport's player, whole (it may be speaking a third time now).
    assert 0 < audio["frames"] <= sent and audio["samples"] == audio["frames"] * FRAME_SAMPLES
    # onRemoteAudioLevel: above zero while the bot speaks, near zero in between: once what was sent ahead
    # (at most the lead and a frame, 0.14 s) has played and has left the player's analyser (its FFT spans
    # 8,192 samples: 0.34 s), 0.8 s after bot-stopped-speaking.
    starts = [e["t"] for e in events if e["name"] == "onBotStartedSpeaking"]
    stops = [e["t"] for e in events if e["name"] == "onBotStoppedSpeaking"]
    levels = audio["levels"]

    def between(t0: float, t1: float) -> list[float]:
        return [x["level"] for x in levels if t0 <= x["t"] < t1]

    for t0, t1 in zip(starts[:2], stops[:2], strict=True):
        speaking = between(t0 + 300, t1)
        assert speaking and max(speaking) > 0.1 and sum(speaking) / len(speaking) > 0.02, speaking
    silent = between(0, starts[0]) + between(stops[0] + 800, starts[1])
    assert len(silent) >= 10 and max(silent) < 0.01, silent


def test_a_fake_microphone_playing_two_utterances_gives_two_turns_ending_with_its_silences(
        site: Path, tmp_path: Path) -> None:
    """``--user-audio vad``: Chromium's fake microphone plays a WAV (two utterances between silences, once), the
    real client streams it, and each turn's speech ends one hangover after the WAV's voice stopped."""
    rec = recording(np.random.default_rng(12), [("silence", [3.0]), ("speech", [0.3, 0.1, 0.35, 0.08, 0.4]),
                                                ("silence", [2.5]), ("speech", [0.45, 0.1, 0.3, 0.12, 0.5, 0.1, 0.3]),
                                                ("silence", [3.0])])
    wav = tmp_path / "two-utterances.wav"
    wav.write_bytes(rec.wav(rate=48_000))
    microphone = (f"--use-file-for-fake-audio-capture={wav}%noloop",)
    with browser_page(site, quick_bot(), 1.0, chromium_args=microphone, user_audio="vad") as (pg, bg, _problems):
        pg.evaluate("(url) => { window.rtvi.connect(url); }", f"ws://127.0.0.1:{bg.port}/rtvi")
        _wait_for(pg, "onUserStoppedSpeaking", count=2)
        time.sleep(1.5)  # the rest of the WAV (silence): no third utterance
        events = _events(pg)
        turns = bg.call(lambda: bg.server.sim.trace.turns_frame())
        conn = bg.call(lambda: bg.server.rtvi.connections["rtvi-1"])
        assert bg.call(lambda: (conn.errors, conn.unheard)) == (0, 0)
    assert [e["name"] for e in events].count("onUserStartedSpeaking") == 2
    assert len(turns) == 2 and turns["outcome"].tolist() == ["complete", "complete"], turns
    hangover, start = HANGOVER_MS / 1000, START_MS / 1000
    # A 30 ms frame, the browser's 20 ms chunks, its audio pipeline, and both processes' scheduling on a loaded
    # machine (the detector hears in audio time, the model applies it when the audio arrives): once 0.23 s.
    slack = 0.25
    (a1, _b1), (a2, _b2) = rec.utterances
    origin = turns["speech_start"].iloc[0] - start - a1  # where the WAV began, on the simulated clock (speed 1)
    for (_, ended), speech_end in zip(rec.utterances, turns["speech_end"], strict=True):
        assert ended + hangover - slack <= speech_end - origin <= ended + hangover + slack, (
            (turns[["speech_start", "speech_end"]] - origin).values.tolist(), rec.utterances)
    assert turns["speech_start"].iloc[1] - origin == pytest.approx(a2 + start, abs=slack)
    assert (turns["audio_quality"] > quick_bot().quality.poor_threshold).all()
