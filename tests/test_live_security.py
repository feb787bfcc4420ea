"""Who may connect and who may control what: the Origin allowlist, the Host check, the token, owner-only
controls, and a readable error for a bad ``--host``.

Handshakes are written by hand on a raw socket, so that each header (Host, Origin, Authorization) is exactly
what the test says; every server listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run, talking_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesim.cli import main as cli_main
from pipesim.live import LiveClient, LiveError, LiveServer, ReplayServer, serve_in_background
from pipesim.live.access import Access, is_loopback

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-Token-42"
QUIET = talking_scenario(1, name="security", seed=2)


def handshake(port: int, headers: dict[str, str] | None = None, target: str = "/ws") -> tuple[int, str]:
    """Open ``target`` with exactly these headers (Host defaults to 127.0.0.1:PORT); status and body."""
    fields = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    lines = [f"GET {target} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in fields.items() if v is not None)]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            if data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data:
                return 101, ""  # upgraded: WebSocket frames follow
    head, _, body = data.partition(b"\r\n\r\n")  # refused: the server closes after the body
    return int(head.split(b" ", 2)[1]), body.decode()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A live server in a background thread; options come by indirect parametrization (see ``options``)."""
    with serve_in_background(QUIET, port=0, speed=20, **getattr(request, "param", {})) as bg:
        yield bg


def options(**kwargs: Any) -> pytest.MarkDecorator:
    """Start the ``server`` fixture with these keyword arguments."""
    return pytest.mark.parametrize("server", [kwargs], indirect=True, ids=[",".join(kwargs)])


# Origin -----------------------------------------------------------------------------------------------
REFUSED_ORIGINS = ["http://evil.example", "null", "https://localhost.evil.example", "http://127.0.0.1.nip.io:8001",
                   "file://", "chrome-extension://abcdef", "ws://localhost:8001", "http://evil.example:8001"]
ACCEPTED_ORIGINS = ["http://localhost:5173", "https://localhost", "http://127.0.0.1:3000", "http://[::1]:8080",
                    "HTTP://LOCALHOST:5173/", "http://127.0.0.2"]


@pytest.mark.parametrize("origin", REFUSED_ORIGINS)
def test_a_page_from_another_origin_is_refused_with_403_and_one_line(server: Any, origin: str) -> None:
    status, body = handshake(server.port, {"Origin": origin})
    assert status == 403
    assert body.count("\n") == 1 and "Origin" in body and "--allow-origin" in body, body
    assert server.call(lambda: server.server.refused) >= 1


@pytest.mark.parametrize("origin", [*ACCEPTED_ORIGINS, None])
def test_localhost_pages_and_programs_without_origin_are_accepted(server: Any, origin: str | None) -> None:
    assert handshake(server.port, {"Origin": origin} if origin else {})[0] == 101


def test_the_servers_own_dashboard_origin_is_accepted_under_an_allowed_host() -> None:
    with serve_in_background(QUIET, port=0, speed=20, allow_hosts=["pipesim.test"]) as bg:
        own = {"Host": f"pipesim.test:{bg.port}", "Origin": f"http://pipesim.test:{bg.port}"}
        assert handshake(bg.port, own)[0] == 101
        # Same name, another port: another origin.
        assert handshake(bg.port, {**own, "Origin": "http://pipesim.test:9999"})[0] == 403


@options(allow_origins=["https://app.example:3000", "null"])
def test_allow_origin_adds_origins(server: Any) -> None:
    assert handshake(server.port, {"Origin": "https://app.example:3000"})[0] == 101
    assert handshake(server.port, {"Origin": "null"})[0] == 101
    assert handshake(server.port, {"Origin": "https://app.example:3001"})[0] == 403
    assert handshake(server.port, {"Origin": "http://localhost:5173"})[0] == 101  # the defaults stay


@options(allow_origins=["*"])
def test_allow_origin_star_accepts_any(server: Any) -> None:
    for origin in REFUSED_ORIGINS:
        assert handshake(server.port, {"Origin": origin})[0] == 101, origin


def test_two_origin_headers_are_refused(server: Any) -> None:
    status, body = handshake(server.port, {"Origin": "http://localhost", "origin": "http://evil.example"})
    assert status == 403 and "more than one Origin" in body


# Host (DNS rebinding) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8001", "127.0.0.1.evil.example", "192.168.1.5",
                                  "", "a:b:c", "localhost:notaport"])
def test_a_host_header_that_is_not_this_machine_is_refused(server: Any, host: str) -> None:
    # A rebinding attack: the hostile page's own name resolves to 127.0.0.1 and its Origin matches its Host.
    status, body = handshake(server.port, {"Host": host, "Origin": f"http://{host}"})
    assert status == 403 and body.count("\n") == 1 and "Host" in body, (host, body)


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1", "[::1]:{port}", "LOCALHOST"])
def test_loopback_host_headers_are_accepted(server: Any, host: str) -> None:
    assert handshake(server.port, {"Host": host.format(port=server.port)})[0] == 101


@options(allow_hosts=["pipesim.lan"])
def test_allow_host_adds_names(server: Any) -> None:
    assert handshake(server.port, {"Host": f"pipesim.lan:{server.port}"})[0] == 101
    assert handshake(server.port, {"Host": "other.lan"})[0] == 403


def test_the_host_check_knows_loopback_and_the_bound_address() -> None:
    assert Access.build("192.168.1.5").refusal({"Host": "192.168.1.5:8001"}, {}) is None
    assert Access.build("0.0.0.0").exposed and Access.build("192.168.1.5").exposed and Access.build("").exposed
    assert not Access.build("127.0.0.1").exposed and not Access.build("::1").exposed
    assert not Access.build("localhost").exposed
    assert [is_loopback(h) for h in ("127.1.2.3", "::1", "[::1]", "foo.localhost", "10.0.0.1", "::")] == [
        True, True, True, True, False, False]


# Token ------------------------------------------------------------------------------------------------
@options(token=TOKEN)
def test_a_token_is_required_in_the_header_or_the_query_and_never_logged(
        server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the websockets library logs request lines and headers at DEBUG
    status, body = handshake(server.port)
    assert status == 403 and body == "a token is required (Authorization: Bearer, or the token query parameter)\n"
    for wrong in ({"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                  {"Authorization": f"Bearer {TOKEN}x"}):
        status, body = handshake(server.port, wrong)
        assert status == 403 and TOKEN not in body, (wrong, body)
    assert handshake(server.port, target=f"/ws?token={TOKEN[:-1]}")[0] == 403
    assert handshake(server.port, {"Authorization": f"Bearer {TOKEN}"})[0] == 101
    assert handshake(server.port, {"Authorization": f"bearer  {TOKEN} "})[0] == 101
    assert handshake(server.port, target=f"/ws?session_id=a&token={TOKEN}")[0] == 101
    # The token opens the door; the origin check still applies.
    assert handshake(server.port, {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"})[0] == 403

    async def a_real_client() -> None:
        async with LiveClient(server.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            await client.control("start", "with-token")
            await client.expect(lambda m: m.get("session_id") == "with-token")

    run(a_real_client())
    # What the server logged (the test's own client logs its headers: not the server's doing).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "refused a WebSocket connection" in logged and "GET /ws" in logged  # the DEBUG lines were there
    assert "Authorization: Bearer ***" in logged
    assert TOKEN not in logged


def test_the_dashboard_page_is_served_without_a_token_and_the_replay_server_checks_it_too() -> None:
    items = [(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0, "seq": 0})]

    async def main() -> None:
        async with ReplayServer(items, port=0, token=TOKEN, allow_origins=["https://app.example"]) as replay:
            port = replay.port
            assert await asyncio.to_thread(handshake, port) == (
                403, "a token is required (Authorization: Bearer, or the token query parameter)\n")
            assert (await asyncio.to_thread(handshake, port, target=f"/ws?token={TOKEN}"))[0] == 101
            ok = {"Origin": "https://app.example", "Authorization": f"Bearer {TOKEN}"}
            assert (await asyncio.to_thread(handshake, port, ok))[0] == 101
            page = await asyncio.to_thread(handshake, port, {}, "/")  # a GET of the page: no upgrade needed
            assert page[0] == 200

    run(main())


def test_pipesim_serve_takes_the_token_from_the_environment(tmp_path: Path) -> None:
    scn = tmp_path / "scn.json"
    scn.write_text(json.dumps({"sessions": {"arrivals": {"kind": "at_once", "count": 0}}}))
    proc = subprocess.Popen([sys.executable, "-m", "pipesim.cli", "serve", str(scn), "--port", "0"], cwd=ROOT,
                            env={**os.environ, "PIPESIM_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/ws", banner).group(1))  # type: ignore[union-attr]
        assert TOKEN not in banner
        assert handshake(port)[0] == 403
        assert handshake(port, {"Authorization": f"Bearer {TOKEN}"})[0] == 101
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and TOKEN not in err, err
    assert "refused a WebSocket connection" in err and "a token is required" in err


# Who may control which session ------------------------------------------------------------------------
def is_error(m: dict[str, Any]) -> bool:
    return m["type"] == "error"


def test_by_default_any_client_may_control_any_session() -> None:
    async def main() -> None:
        async with LiveServer(QUIET, port=0, speed=20) as server, \
                LiveClient(server.url) as a, LiveClient(server.url, session_id="x") as b:
            await a.control("start", "mine")
            await a.expect(lambda m: m.get("session_id") == "mine" and m.get("event") == "session_started")
            await b.control("pause", "mine")
            await b.control("pause", "sim-00001")  # the scenario's own, too
            await b.expect(lambda m: m.get("session_id") == "sim-00001" and m.get("event") == "session_paused")
            assert server.sim.manager.status("mine") == "paused"
            assert not [m for m in b.messages if is_error(m)]

    run(main())


def test_owner_only_lets_a_connection_control_only_the_sessions_it_started() -> None:
    async def main() -> None:
        async with LiveServer(QUIET, port=0, speed=20, owner_only=True) as server, \
                LiveClient(server.url, session_id="nothing") as a, LiveClient(server.url) as b:
            await a.control("start", "a1")
            await a.expect(lambda m: m.get("session_id") == "a1" and m.get("event") == "session_started")
            for action, sid in (("pause", "a1"), ("stop", "a1"), ("start", "a1"), ("pause", "sim-00001")):
                await b.control(action, sid)
                err = await b.expect(is_error)
                assert err["code"] == "forbidden" and err["session_id"] == sid, err
                assert repr(sid) in err["message"] and action in err["message"]
            await b.control("pause", "ghost")  # a session that does not exist: the usual answer
            assert (await b.expect(is_error))["code"] == "unknown_session"
            assert server.sim.manager.status("a1") == "active"
            # The owner may do everything, including resuming.
            await a.control("pause", "a1")
            await a.expect(lambda m: m.get("event") == "session_paused")
            await a.control("start", "a1")
            await a.expect(lambda m: m.get("event") == "session_resumed")
            # Ownership is by connection: the same client reconnected is another connection.
            async with LiveClient(server.url, session_id="a1") as again:
                await again.control("stop", "a1")
                assert (await again.expect(is_error))["code"] == "forbidden"
            await a.control("stop", "a1")
            await a.expect(lambda m: m["type"] == "session_ended")
            assert not [m for m in a.messages if is_error(m)]

    run(main())


# A bad --host -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["nohost.invalid", "999.1.1.1", "127.0.0.1:80", "a b"])
def test_a_bad_host_is_one_readable_line(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LiveError, match=r"cannot listen on .*: .*(not known|resolution|--host must be)"):
        run(LiveServer(QUIET, host=host, port=0).start())
    assert cli_main(["serve", "--host", host, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipesim: error: cannot listen on {host}:0: ") and err.count("\n") == 1, err
    assert "Unknown error" not in err and "Traceback" not in err


def test_listening_beyond_loopback_without_a_token_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def start_and_stop(exposed_as: str | None, token: str | None) -> None:
        server = LiveServer(QUIET, port=0, token=token)
        if exposed_as is not None:  # as if bound there (tests listen on loopback only)
            server.access = Access.build(exposed_as, token=token)
        async with server:
            pass

    warned = "beyond this machine, without a token"
    for exposed_as, token, expected in ((None, None, False), ("0.0.0.0", None, True), ("192.0.2.1", None, True),
                                        ("0.0.0.0", TOKEN, False)):
        caplog.clear()
        run(start_and_stop(exposed_as, token))
        assert any(warned in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == expected


header_values = st.one_of(st.none(), st.text(max_size=60), st.sampled_from(
    ["[", "[::1", "localhost:99999", "127.0.0.1:-1", "http://[", "http://localhost:x", "Bearer", "Bearer ",
     f"Bearer {TOKEN}", TOKEN, "\u2100.example", "localhost\u3002com"]))


@settings(max_examples=300, deadline=None)
@given(host=header_values, origin=header_values, authorization=header_values,
       query_token=st.one_of(st.none(), st.text(max_size=30)))
def test_any_handshake_headers_get_a_decision_never_an_exception(
        host: str | None, origin: str | None, authorization: str | None, query_token: str | None) -> None:
    headers = {k: v for k, v in (("Host", host), ("Origin", origin), ("Authorization", authorization)) if v is not None}
    query = {"token": [query_token]} if query_token is not None else {}
    for access in (Access.build("127.0.0.1"), Access.build("127.0.0.1", ["*"], ["*"], TOKEN)):
        reason = access.refusal(headers, query)
        assert reason is None or ("\n" not in reason and TOKEN not in reason and len(reason) < 200), reason
