"""The live server under trouble: bad and huge messages, clients that vanish or never read, SIGTERM.

In each case the client at fault gets an answer (or is disconnected) and every other client and session
carries on.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import jsonschema
from conftest import run, talking_scenario

from pipesim.live import LiveClient, LiveServer
from pipesim.protocol import MAX_MESSAGE_BYTES, json_schemas

VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in json_schemas().items()}
ROOT = Path(__file__).resolve().parent.parent


TROUBLE = {"name": "trouble", "seed": 11}


def is_(session_id: str, **fields: Any) -> Any:
    return lambda m: m.get("session_id") == session_id and all(m.get(k) == v for k, v in fields.items())


def is_error(m: dict[str, Any]) -> bool:
    return m["type"] == "error"


def test_bad_messages_get_an_error_and_the_connection_and_other_sessions_carry_on() -> None:
    bad: list[tuple[str | bytes, str, str]] = [
        ("{nope", "bad_message", "invalid JSON"),
        ('{"type":"hello"}', "bad_message", "unknown message type 'hello'"),
        ('{"action":"start","session_id":"a"}', "bad_message", "no 'type'"),
        ('{"type":"conversation_control","action":"start"}', "bad_message", "session_id: required"),
        ('{"type":"conversation_control","action":"jump","session_id":"a"}', "bad_message", "'jump'"),
        ('{"type":"fault_injection","fault":"kafka_stall","duration_s":-1}', "bad_message", "duration_s"),
        ('{"type":"pipeline_state_update","session_id":"a"}', "bad_message", "unknown message type"),
        ("[1, 2]", "bad_message", "JSON object"),
        (b"\xff\xfe\x00", "bad_message", "UTF-8"),
        ('{"type":"conversation_control","action":"start","session_id":"a","pad":"'
         + "x" * MAX_MESSAGE_BYTES + '"}', "too_large", str(MAX_MESSAGE_BYTES)),
    ]

    async def main() -> None:
        async with LiveServer(talking_scenario(**TROUBLE), port=0, speed=20) as server, \
                LiveClient(server.url, session_id="good") as other, LiveClient(server.url) as client:
            await other.control("start", "good")
            await other.expect(is_("good", event="audio"))
            for raw, code, text in bad:
                await client.send(raw)
                err = await client.expect(is_error)
                assert err["code"] == code and text in err["message"], (raw[:80], err)
                VALIDATORS["error"].validate(err)
            # Still connected and able to do the right thing; nothing of the bad messages happened.
            assert "a" not in server.sim.manager
            await client.control("start", "a")
            await client.expect(is_("a", type="session_created"))
            # The other client's session never noticed: every seq arrived, in order, and it still runs.
            last = other.messages[-1]["seq"]
            await other.expect(lambda m: m["seq"] >= last + 3)
            assert [m["seq"] for m in other.messages] == list(range(len(other.messages)))
            assert server.clients == 2

    run(main())


def test_a_message_above_the_frame_limit_closes_only_that_connection_with_1009() -> None:
    async def main() -> None:
        async with LiveServer(talking_scenario(1, **TROUBLE), port=0, speed=20) as server, \
                LiveClient(server.url) as other, LiveClient(server.url, compression=None) as client:
            await client.send("x" * (4 * MAX_MESSAGE_BYTES + 1))
            code, _ = await client.wait_closed()
            assert code == 1009  # message too big: the websockets library's own limit
            last = other.messages[-1]["seq"]
            await other.expect(lambda m: m["seq"] >= last + 3)
            assert not other.closed

    run(main())


def test_a_client_that_vanishes_mid_session_disturbs_nobody() -> None:
    async def main() -> None:
        async with LiveServer(talking_scenario(**TROUBLE), port=0, speed=20) as server, \
                LiveClient(server.url) as dashboard, LiveClient(server.url, session_id="b") as b:
            a = await LiveClient(server.url, session_id="a").connect()
            await a.control("start", "a")
            await b.control("start", "b")
            await a.expect(is_("a", event="audio"))
            a.ws.transport.abort()  # no close handshake: the TCP connection just goes
            await a.wait_closed()
            for _ in range(3):
                await b.expect(is_("b", event="audio"))
                await dashboard.expect(is_("a", event="audio"))  # sessions outlive their connections
            assert server.sim.manager.status("a") == "active"
            assert server.clients == 2

    run(main())


async def _raw_websocket(port: int) -> socket.socket:
    """A WebSocket connection that completes the handshake and then never reads (a tiny receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)  # byte by byte: read nothing beyond the handshake
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_client_that_never_reads_is_disconnected_and_the_others_keep_up() -> None:
    async def main() -> None:
        # 20 talking sessions at 50x: ~1700 messages a second; the slow limit is 200 messages.
        scn = talking_scenario(20, **TROUBLE)
        async with LiveServer(scn, port=0, speed=50, client_queue=200) as server, \
                LiveClient(server.url) as fast:
            loop = asyncio.get_running_loop()
            slow = await _raw_websocket(server.port)
            while server.slow_disconnects == 0:
                await asyncio.sleep(0.02)
            assert server.clients == 1
            # The fast client is not behind: a message produced from now on arrives within 0.5 s.
            for _ in range(5):
                now = server.pacer.now()
                started = loop.time()
                await fast.expect(lambda m, now=now: m["timestamp"] >= now, timeout=5)
                assert loop.time() - started < 0.5
            assert server.pacer.now() - server.sim.env.now < 5.0  # the clock kept pace with the wall
            assert not fast.closed
            # The slow client finds its connection closed once it reads: after what was buffered, the
            # close frame (1013) if it made it into the buffers, else the TCP connection is aborted.
            received = b""
            try:
                while chunk := await loop.sock_recv(slow, 65536):
                    received += chunk
            except ConnectionResetError:
                pass
            finally:
                slow.close()
            assert received, "the slow client had been sent messages before it was dropped"

    run(main())


def test_sigterm_closes_clients_with_1001_and_leaves_a_complete_recording(tmp_path: Path) -> None:
    scn_file = tmp_path / "scn.json"
    scn_file.write_text(talking_scenario(2, **TROUBLE).model_dump_json())
    recording = tmp_path / "rec.jsonl"

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipesim.cli", "serve", str(scn_file), "--port", "0", "--speed", "20",
            "--record", str(recording), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            banner = (await proc.stdout.readline()).decode()
            match = re.search(r"ws://127\.0\.0\.1:(\d+)/ws", banner)
            assert match, banner  # bound to 127.0.0.1 by default
            url = match.group(0)
            async with LiveClient(url) as dashboard, LiveClient(url, session_id="t") as mine:
                await mine.control("start", "t")
                await mine.expect(is_("t", event="audio"))
                await dashboard.expect(is_("t", event="audio"))
                proc.send_signal(signal.SIGTERM)
                assert (await dashboard.wait_closed())[0] == 1001
                assert (await mine.wait_closed())[0] == 1001
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        lines = recording.read_text().splitlines(keepends=True)
        assert all(line.endswith("\n") for line in lines)
        records = [json.loads(line) for line in lines]
        assert records[0]["recording"] == "pipesim" and records[0]["scenario"] == "trouble"
        recorded = [r["message"] for r in records[1:]]
        for r in records[1:]:
            VALIDATORS[r["message"]["type"]].validate(r["message"])
            assert r["t"] == r["message"]["timestamp"] and r["wall"] >= 0
        # The dashboard connected after the start (its first messages were snapshots); everything it got
        # after those is exactly the end of the recording: nothing lost on the way out.
        live = [m for m in dashboard.messages if m.get("event") != "snapshot"]
        assert len(live) >= 3 and recorded[-len(live):] == live
        assert [m for m in recorded if m["session_id"] == "t"] == mine.messages

    run(main())
