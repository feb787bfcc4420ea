"""Pipecat's RTVI dialect on ``/rtvi`` (``pipesim.live.rtvi``), spoken to by a Python client in RTVI's own
binary framing: the handshake, the model's events as RTVI messages in the table's order, client messages,
seed controls and faults acting on RTVI sessions, recording, access checks and determinism.

Every test starts its own server on 127.0.0.1, port 0, at high speed, with no background sessions.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the successor of httpx (Starlette's TestClient uses it too)
import pytest
from conftest import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pipesim.live import LiveClient, LiveServer
from pipesim.live.rtvi import MAPPING, RTVI_VERSION, mapping_markdown
from pipesim.live.rtvi_codec import decode_frame, encode_message
from pipesim.scenario import Scenario
from pipesim.vocabulary import RTVI_SERVER_MESSAGE_TYPES

ROOT = Path(__file__).resolve().parent.parent
#: One user turn's messages (server-message and metrics aside) ...
TURN = ["user-started-speaking", "user-stopped-speaking", "user-transcription", "bot-llm-started", "bot-llm-text",
        "bot-tts-started", "bot-started-speaking", "bot-output", "bot-llm-text", "bot-llm-stopped", "bot-output",
        "bot-tts-stopped", "bot-stopped-speaking"]
#: ... in an order where each of these comes before the next one on its line. The LLM streams into TTS, so
#: the reply's last text and ``bot-llm-stopped`` may come before or after the bot starts speaking.
TURN_ORDER = [
    ["user-started-speaking", "user-stopped-speaking", "user-transcription", "bot-llm-started", "bot-llm-text",
     "bot-tts-started", "bot-started-speaking", "bot-output", "bot-tts-stopped", "bot-stopped-speaking"],
    ["bot-llm-text", "bot-llm-text", "bot-llm-stopped", "bot-tts-stopped"],
    ["bot-output", "bot-output"],
]


def turns_in_order(types: list[str], n_turns: int) -> bool:
    """``types`` is ``n_turns`` whole turns, one after the other, each in the order of :data:`TURN_ORDER`."""
    if len(types) != n_turns * len(TURN):
        return False
    for k in range(n_turns):
        turn = types[k * len(TURN):(k + 1) * len(TURN)]
        if sorted(turn) != sorted(TURN):
            return False
        for chain in TURN_ORDER:
            start = 0
            for name in chain:
                if name not in turn[start:]:
                    return False
                start = turn.index(name, start) + 1
    return True


def scenario(turns: int = 2, **extra: Any) -> Scenario:
    data: dict[str, Any] = {"name": "rtvi-test", "seed": 11, "sessions": {
        "arrivals": {"kind": "at_once", "count": 0}, "turns": turns, "first_speech_delay_s": 0.3,
        "utterance_s": 1.0, "think_time_s": 0.5, "barge_in_probability": 0.0}}
    data.update(extra)
    return Scenario.model_validate(data)


def rtvi_url(server: LiveServer) -> str:
    return server.url.removesuffix("/ws") + "/rtvi"


async def send(ws: ClientConnection, type_: str, data: Any = None, id_: str | None = None) -> None:
    envelope: dict[str, Any] = {"label": "rtvi-ai", "type": type_, "data": data}
    if id_ is not None:
        envelope["id"] = id_
    await ws.send(encode_message(envelope))


async def receive(ws: ClientConnection, until: str | None = None) -> list[dict[str, Any]]:
    """Messages until one of type ``until`` (included), or until the server closes the socket (the bot's
    audio frames are left out: see tests/test_rtvi_audio.py)."""
    out = []
    try:
        while True:
            raw = await ws.recv()
            assert isinstance(raw, bytes), "RTVI frames are binary"
            frame = decode_frame(raw)
            if frame.kind == "audio":
                continue
            message = frame.message
            assert message is not None and message["label"] == "rtvi-ai"
            out.append(message)
            if message["type"] == until:
                return out
    except ConnectionClosed:
        return out


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages if m["type"] not in ("server-message", "metrics")]


def test_a_whole_session_follows_the_mapping_and_ends_with_a_normal_close() -> None:
    async def main() -> tuple[list[dict[str, Any]], int | None, Any]:
        async with LiveServer(scenario(turns=2), port=0, speed=30) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {"version": "2.1.0", "about": {"library": "test"}}, "ready-1")
            messages = await receive(ws)
            return messages, ws.close_code, server.sim.trace.turns_frame()

    messages, code, turns = run(main())
    assert messages[0] == {"label": "rtvi-ai", "type": "bot-ready", "id": "ready-1", "data": {
        "version": RTVI_VERSION, "about": {"library": "pipesim", "library_version": messages[0]["data"]["about"][
            "library_version"], "session_id": "rtvi-1"}}}
    assert turns_in_order(kinds(messages[1:]), 2), kinds(messages[1:])  # two turns, nothing failed or else
    assert code == 1000
    assert {m["type"] for m in messages} <= set(RTVI_SERVER_MESSAGE_TYPES)
    # server-message carries the seed's own messages, from session_created to session_ended.
    seed = [m["data"] for m in messages if m["type"] == "server-message"]
    assert seed[0]["type"] == "session_created" and seed[-1]["type"] == "session_ended"
    assert [s["seq"] for s in seed] == list(range(len(seed)))
    assert any(s["type"] == "pipeline_state_update" and s["metadata"]["buffer_size"] > 0 for s in seed)
    # metrics: ttfb and processing of every service, each turn; LLM ttfb is the model's own number.
    metrics = [m["data"] for m in messages if m["type"] == "metrics"]
    ttfb = [(d["ttfb"][0]["processor"], d["ttfb"][0]["value"]) for d in metrics if "ttfb" in d]
    processing = [d["processing"][0]["processor"] for d in metrics if "processing" in d]
    assert [p for p, _ in ttfb] == ["stt", "llm", "tts"] * 2 and processing == ["stt", "llm", "tts"] * 2
    assert all(v > 0 for _, v in ttfb)
    assert [v for p, v in ttfb if p == "llm"] == pytest.approx(list(turns["ttft"]), abs=1e-5)
    assert [v for p, v in ttfb if p == "tts"] == pytest.approx(list(turns["ttfb"]), abs=1e-5)
    # The reply's text: the first phrase, then the rest; bot-output carries the whole of it.
    llm_text = [m["data"]["text"] for m in messages if m["type"] == "bot-llm-text"]
    outputs = [m["data"] for m in messages if m["type"] == "bot-output"]
    assert outputs[0]["text"] == llm_text[0] + llm_text[1] and outputs[0]["text"].endswith(".")
    assert [o["spoken_status"] for o in outputs] == ["new", "completed"] * 2
    transcript = next(m["data"] for m in messages if m["type"] == "user-transcription")
    assert transcript["final"] is True and transcript["text"] and transcript["user_id"] == "rtvi-1"


def test_same_seed_same_rtvi_messages() -> None:
    def strip(value: Any) -> Any:  # wall-clock-dependent: when the session was created
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("timestamp", "library_version")}
        return value

    async def once() -> list[Any]:
        async with LiveServer(scenario(turns=2), port=0, speed=40) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            return [strip(m) for m in await receive(ws)]

    first, second = run(once()), run(once())
    assert len(first) > 50 and first == second


def test_client_messages_are_answered_and_bad_ones_get_an_error_not_a_hangup() -> None:
    async def main() -> list[dict[str, Any]]:
        async with LiveServer(scenario(turns=50), port=0, speed=5) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-message", {"t": "early"}, "m0")  # before client-ready
            await send(ws, "client-ready", {}, "r")
            await ws.send(b"\x22\x05\x0a\x03")  # truncated protobuf
            await ws.send('{"label": "rtvi-ai", "type": "client-ready"}')  # a JSON text frame
            await send(ws, "dtmf", {"buttons": ["1"]}, "d1")
            await send(ws, "client-message", {"d": 1}, "m1")  # no t
            await send(ws, "client-ready", {}, "r2")
            await send(ws, "client-message", {"t": "ping", "d": {"n": 7}}, "m2")
            got = []
            while not any(m.get("id") == "m2" for m in got):
                got += await receive(ws, until="server-response")
            return got

    got = [m for m in run(main()) if m["type"] in ("error", "error-response", "server-response", "bot-ready")]
    by_id = {m.get("id"): m for m in got}
    assert by_id["m0"]["type"] == "error-response" and "client-ready first" in by_id["m0"]["data"]["error"]
    assert by_id["r"]["type"] == "bot-ready"
    frame_errors = [m["data"] for m in got if m["type"] == "error"]
    assert len(frame_errors) == 2 and all(not e["fatal"] and e["error"].startswith("bad frame: pipecat.")
                                          for e in frame_errors)
    assert by_id["d1"]["type"] == "error-response" and "'dtmf' is not supported" in by_id["d1"]["data"]["error"]
    assert by_id["m1"]["type"] == "error-response" and "data.t" in by_id["m1"]["data"]["error"]
    assert by_id["r2"]["type"] == "error-response" and "already ready" in by_id["r2"]["data"]["error"]
    assert by_id["m2"]["data"]["t"] == "ping"
    assert by_id["m2"]["data"]["d"]["received"] == {"n": 7}
    assert by_id["m2"]["data"]["d"]["session_id"] == "rtvi-1"


def test_send_text_starts_a_turn_whose_transcript_is_the_text_and_audio_is_counted() -> None:
    slow_user = {"first_speech_delay_s": 1000.0}  # the simulated user would not speak on its own

    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with LiveServer(scenario(turns=1, sessions={
                "arrivals": {"kind": "at_once", "count": 0}, "turns": 1, **slow_user, "utterance_s": 0.5,
                "barge_in_probability": 0.0}), port=0, speed=20) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await receive(ws, until="bot-ready")
            golden = json.loads((ROOT / "tests/data/rtvi_frames.json").read_text())["frames"]
            audio = bytes.fromhex(next(f["hex"] for f in golden if f["kind"] == "audio"))  # the microphone's
            for _ in range(31):
                await ws.send(audio)
            await send(ws, "send-text", {"content": "book a table for two", "options": {}}, "t1")
            messages = await receive(ws, until="bot-stopped-speaking")
            conn = server.rtvi.connections["rtvi-1"]
            return messages, (conn.audio_frames, conn.audio_bytes, conn.errors)

    messages, (frames, nbytes, errors) = run(main())
    assert turns_in_order(kinds(messages), 1), kinds(messages)
    transcript = next(m for m in messages if m["type"] == "user-transcription")
    assert transcript["data"]["text"] == "book a table for two"
    assert (frames, nbytes, errors) == (31, 31 * 12, 0)


def test_send_text_while_the_bot_prepares_its_reply_is_refused_with_the_same_id() -> None:
    async def main() -> dict[str, Any]:
        async with LiveServer(scenario(turns=5), port=0, speed=10) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await receive(ws, until="user-transcription")  # STT done: the LLM is working, TTS not yet
            await send(ws, "send-text", {"content": "hello"}, "t1")
            return next(m for m in await receive(ws, until="error-response") if m["type"] == "error-response")

    answer = run(main())
    assert answer["id"] == "t1" and "preparing its reply" in answer["data"]["error"]


def test_send_text_while_the_bot_speaks_interrupts_it_and_starts_the_next_turn() -> None:
    async def main() -> list[dict[str, Any]]:
        async with LiveServer(scenario(turns=1), port=0, speed=10) as server, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await receive(ws, until="bot-started-speaking")  # ~0.3 s of audio per token: it talks a while
            await send(ws, "send-text", {"content": "stop, one more thing"}, "t1")
            return await receive(ws)  # the user's extra turn, then the session ends (its one turn is done)

    messages = run(main())
    after = kinds(messages)
    cut = after.index("user-started-speaking")
    # Cut off: TTS and playback stop (no "completed" bot-output), then the user's turn, whole and in order.
    assert after[cut - 2:cut] == ["bot-tts-stopped", "bot-stopped-speaking"] and after[:cut].count("bot-output") <= 1
    assert turns_in_order(after[cut:], 1), after
    assert next(m for m in messages if m["type"] == "user-transcription")["data"]["text"] == "stop, one more thing"


def test_seed_clients_see_control_and_fault_rtvi_sessions_and_the_recording_has_them(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
        async with LiveServer(scenario(turns=1000), port=0, speed=10, record=record) as server, \
                LiveClient(server.url) as dashboard, connect(rtvi_url(server)) as ws:
            await send(ws, "client-ready", {}, "r")
            await dashboard.expect(lambda m: m.get("session_id") == "rtvi-1" and m["type"] == "session_created")
            rtvi = await receive(ws, until="user-transcription")
            await dashboard.send({"type": "fault_injection", "fault": "service_outage", "service": "llm",
                                  "duration_s": 60})
            rtvi += await receive(ws, until="error")
            await dashboard.control("pause", "rtvi-1")
            await dashboard.control("stop", "rtvi-1")
            rtvi += await receive(ws)
            return rtvi, dashboard.messages, ws.close_code

    rtvi, dashboard, code = run(main())
    error = next(m for m in rtvi if m["type"] == "error")
    assert error["data"]["fatal"] is False and "llm" in error["data"]["error"]
    assert kinds(rtvi)[-2:] != ["bot-llm-started", "bot-llm-started"]
    seed = [m["data"] for m in rtvi if m["type"] == "server-message"]
    assert [s.get("event") for s in seed[-3:-1]] == ["session_paused", "session_stopped"]
    assert seed[-1]["type"] == "session_ended" and code == 1000
    assert any(m.get("session_id") == "rtvi-1" and m["type"] == "session_ended" for m in dashboard)
    recorded = [json.loads(line) for line in record.read_text().splitlines()[1:]]
    assert sum(1 for r in recorded if r["message"].get("session_id") == "rtvi-1") == len(seed)


def test_disconnect_bot_stops_the_session_and_closing_the_socket_stops_it_too() -> None:
    async def main() -> tuple[int | None, str, str]:
        async with LiveServer(scenario(turns=1000), port=0, speed=10) as server:
            async with connect(rtvi_url(server)) as ws:
                await send(ws, "client-ready", {}, "r")
                await receive(ws, until="bot-ready")
                await send(ws, "disconnect-bot", {}, "x")
                await receive(ws)
                code = ws.close_code
            async with connect(rtvi_url(server)) as ws:
                await send(ws, "client-ready", {}, "r")
                await receive(ws, until="user-started-speaking")
            for _ in range(100):  # the server sees the close a moment later
                if server.sim.manager.status("rtvi-2") == "stopped":
                    break
                await asyncio.sleep(0.02)
            return code, server.sim.manager.status("rtvi-1"), server.sim.manager.status("rtvi-2")

    assert run(main()) == (1000, "stopped", "stopped")


def test_rtvi_handshake_has_the_same_access_checks_and_a_disconnect_fault_reaches_it() -> None:
    async def main() -> tuple[int, int | None]:
        async with LiveServer(scenario(turns=1000), port=0, speed=10, token="s3cret") as server:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(rtvi_url(server)):
                    pass
            async with connect(rtvi_url(server) + "?token=s3cret") as ws, \
                    LiveClient(server.url + "?token=s3cret") as seed:
                await send(ws, "client-ready", {}, "r")
                await receive(ws, until="bot-ready")
                await seed.send({"type": "fault_injection", "fault": "disconnect", "session_id": "rtvi-1"})
                await receive(ws)
                return refused.value.response.status_code, ws.close_code

    assert run(main()) == (403, 4000)


def test_the_replay_server_does_not_serve_rtvi() -> None:
    from pipesim.live import ReplayServer

    async def main() -> int:
        async with ReplayServer([(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0,
                                        "seq": 0})], port=0) as server:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(rtvi_url(server)):
                    pass
            return refused.value.response.status_code

    assert run(main()) == 404


def test_the_readme_shows_the_mapping_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert mapping_markdown() in readme


def test_every_rtvi_message_of_the_table_is_in_the_vocabulary() -> None:
    assert {m for rule in MAPPING for m in rule.rtvi} <= set(RTVI_SERVER_MESSAGE_TYPES)
    assert re.fullmatch(r"\d+\.\d+\.\d+", RTVI_VERSION)


_SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text()
            | st.floats(allow_nan=False, allow_infinity=False))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
_ENVELOPES = st.fixed_dictionaries({}, optional={
    "label": st.sampled_from(["rtvi-ai", "other"]) | _JSON,
    "type": st.sampled_from(["client-ready", "send-text", "client-message", "dtmf", "ui-event"]) | _JSON,
    "id": st.text(max_size=5) | _JSON,
    "data": _JSON | st.fixed_dictionaries({}, optional={"t": _JSON, "d": _JSON, "content": _JSON}),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ENVELOPES | st.binary(max_size=40), min_size=1, max_size=6))
def test_whatever_a_client_sends_the_connection_and_the_bot_carry_on(sent: list[Any]) -> None:
    async def main() -> list[dict[str, Any]]:
        async with LiveServer(scenario(turns=3), port=0, speed=20) as server, connect(rtvi_url(server)) as ws:
            for item in sent:
                await ws.send(item if isinstance(item, bytes) else encode_message(item))
            await send(ws, "client-ready", {}, "late-ready")
            await send(ws, "client-message", {"t": "still-there"}, "probe")
            got: list[dict[str, Any]] = []
            while not any(m.get("id") == "probe" for m in got):
                more = await receive(ws, until="server-response")
                assert more, "the server closed the connection"
                got += more
            return got

    got = run(main(), timeout=30)
    assert not [m for m in got if "internal error" in json.dumps(m)]
    probe = next(m for m in got if m.get("id") == "probe")
    assert probe["type"] == "server-response" and probe["data"]["t"] == "still-there"


def test_an_admin_reset_closes_rtvi_sockets_and_the_next_one_runs_on_the_new_model() -> None:
    async def main() -> tuple[int | None, list[dict[str, Any]], bool, int | None]:
        async with LiveServer(scenario(turns=50), port=0, speed=5, admin_port=0, trace_limit=5_000,
                              forget_after=None) as server:
            async with connect(rtvi_url(server)) as ws:
                await send(ws, "client-ready", {"version": "2.1.0"}, "r1")
                await receive(ws, until="bot-ready")
                async with httpx.AsyncClient() as http:
                    assert (await http.post(f"{server.admin_url}/reset")).status_code == 200
                await receive(ws)  # to the close
                closed = ws.close_code
            bounded = server.sim.trace.limit == 5_000  # the new model is as bounded as the first
            async with connect(rtvi_url(server)) as ws:
                await send(ws, "client-ready", {"version": "2.1.0"}, "r2")
                again = await receive(ws, until="bot-ready")
                sid = again[-1]["data"]["about"]["session_id"]
                return closed, again, bounded and sid in server.sim.manager, None

    closed, again, on_new_model, _ = run(main())
    assert closed == 1000
    assert again[-1]["id"] == "r2" and on_new_model


def test_a_forgotten_rtvi_session_leaves_nothing_behind() -> None:
    async def main() -> tuple[bool, bool]:
        async with LiveServer(scenario(turns=1), port=0, speed=50, forget_after=1.0) as server:
            async with connect(rtvi_url(server)) as ws:
                await send(ws, "client-ready", {"version": "2.1.0"}, "r1")
                await receive(ws)  # one turn, then the session stops and the socket closes
            kept = "rtvi-1" in server.rtvi.connections
            while "rtvi-1" in server.sim.manager:  # forgotten 1 simulated second after it stopped
                await asyncio.sleep(0.05)
            return kept, "rtvi-1" in server.rtvi.connections

    kept_while_stopped, kept_after_forgotten = run(main())
    assert kept_while_stopped and not kept_after_forgotten
