"""``wss://`` and ``https://``: every endpoint over TLS with one certificate (``pipesim.live.tls``), as a client
that trusts the CA sees it; a plain client is refused without hurting the server; a bad certificate or key is
one line; ``--tls-self-signed`` keeps one CA across runs and says how to trust it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the successor of httpx (Starlette's TestClient uses it too)
import pytest
import trustme
from conftest import run, talking_scenario
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from test_rtvi import rtvi_url, send
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidMessage

from pipesim.cli import main
from pipesim.live import LiveServer, ReplayServer
from pipesim.live.rtvi_codec import decode_frame
from pipesim.live.tls import Tls, self_signed

pytestmark = pytest.mark.timeout(120)


def test_every_endpoint_speaks_tls_to_a_client_that_trusts_the_ca(tls_files: Tls) -> None:
    trusted = tls_files.client_context()

    async def main_() -> None:
        async with LiveServer(talking_scenario(), port=0, speed=20, admin_port=0, tls=tls_files) as server:
            base = f"127.0.0.1:{server.port}"
            assert (server.url, server.http_url) == (f"wss://{base}/ws", f"https://{base}/")
            assert server.admin_url == f"https://127.0.0.1:{server.admin.port}/__admin"  # type: ignore[union-attr]
            async with connect(server.url, ssl=trusted) as seed:
                await seed.send(json.dumps({"type": "conversation_control", "action": "start", "session_id": "t"}))
                assert json.loads(await asyncio.wait_for(seed.recv(), 10))["type"] == "session_created"
            async with connect(rtvi_url(server).replace("ws://", "wss://"), ssl=trusted) as rtvi:
                await send(rtvi, "client-ready", {}, "r1")
                ready = decode_frame(await asyncio.wait_for(rtvi.recv(), 10)).message
                assert ready is not None and ready["type"] == "bot-ready"
            # An https:// page of localhost may connect, as an http:// one may; another origin may not.
            async with connect(server.url, ssl=trusted, origin="https://localhost:5173"):  # type: ignore[arg-type]
                pass
            with pytest.raises(InvalidHandshake):
                async with connect(server.url, ssl=trusted, origin="https://evil.example"):  # type: ignore[arg-type]
                    pass
            async with httpx.AsyncClient(verify=trusted) as http:
                assert (await http.get(f"https://{base}/healthz")).text.strip() == "ok"
                assert (await http.get(f"https://{base}/stats")).json()["kind"] == "live"
                assert "pipesim" in (await http.get(server.http_url)).text
                health = await http.get(f"{server.admin_url}/health")
                assert health.status_code == 200, health.text
                sessions = (await http.get(f"{server.admin_url}/sessions")).json()["sessions"]
                assert "t" in {s["session_id"] for s in sessions}

    run(main_())


def test_a_replay_speaks_tls_too(tls_files: Tls) -> None:
    async def main_() -> str:
        items = [(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0, "seq": 0})]
        async with ReplayServer(items, port=0, tls=tls_files) as server, \
                connect(server.url, ssl=tls_files.client_context()) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]

    assert run(main_()) == "session_created"


def test_a_plain_client_is_refused_and_the_server_stays_healthy(tls_files: Tls,
                                                                errors_logged: list[Any]) -> None:
    trusted = tls_files.client_context()

    async def main_() -> None:
        async with LiveServer(talking_scenario(), port=0, speed=20, admin_port=0, tls=tls_files) as server:
            plain = server.url.replace("wss://", "ws://")
            for _ in range(3):
                with pytest.raises((InvalidMessage, InvalidHandshake, ConnectionError, EOFError)):
                    async with connect(plain, open_timeout=10):
                        pass
            async with httpx.AsyncClient() as http:
                for url in (server.http_url.replace("https://", "http://"),
                            str(server.admin_url).replace("https://", "http://") + "/health"):
                    with pytest.raises(httpx.HTTPError):
                        await http.get(url, timeout=10)
            # A TLS client right after is served as ever.
            async with connect(server.url, ssl=trusted) as ws:
                await ws.send(json.dumps({"type": "conversation_control", "action": "start", "session_id": "s"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session_created"
            async with httpx.AsyncClient(verify=trusted) as http:
                assert (await http.get(f"{server.admin_url}/health")).status_code == 200
            assert server.refused == 0  # not an access refusal: the TLS handshake never happened

    run(main_())
    assert errors_logged == []


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_files: Tls) -> None:
    async def main_() -> None:
        async with LiveServer(talking_scenario(), port=0, tls=tls_files) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                async with connect(server.url, ssl=ssl.create_default_context()):
                    pass

    run(main_())


def test_self_signed_keeps_one_ca_and_certificate_across_runs(tmp_path: Path) -> None:
    first = self_signed(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(files) == {"ca.pem", "ca-key.pem", "localhost.pem", "localhost-key.pem"}
    assert oct((tmp_path / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    again = self_signed(tmp_path)
    assert again == first and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    pin = first.spki_sha256()
    (tmp_path / "localhost.pem").unlink()  # a certificate lost is made again, from the same CA
    remade = self_signed(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == files["ca.pem"] and remade.spki_sha256() != pin


def _pem(kind: str) -> str:
    return f"-----BEGIN {kind}-----\nbm90IGEga2V5\n-----END {kind}-----\n"


@pytest.mark.parametrize("case", ["missing cert", "missing key", "not a certificate", "not a key",
                                  "another key", "encrypted key", "expired", "key alone", "cert alone",
                                  "dir without self-signed"])
def test_a_bad_certificate_or_key_is_one_line_naming_the_file(case: str, tmp_path: Path, tls_files: Tls,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = self_signed(tmp_path / "other")
    cert, key = str(tls_files.cert), str(tls_files.key)
    junk = tmp_path / "junk.pem"
    junk.write_text(_pem("CERTIFICATE") if case == "not a certificate" else _pem("PRIVATE KEY"))
    locked, old = tmp_path / "locked-key.pem", tmp_path / "old.pem"
    if case == "encrypted key":
        key_object = load_pem_private_key(tls_files.key.read_bytes(), password=None)
        locked.write_bytes(key_object.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                    BestAvailableEncryption(b"passphrase")))
    if case == "expired":
        leaf = trustme.CA().issue_cert("localhost", not_after=datetime(2001, 1, 1))
        old.write_bytes(leaf.cert_chain_pems[0].bytes())
        (tmp_path / "old-key.pem").write_bytes(leaf.private_key_pem.bytes())
    args, named = {
        "missing cert": (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key], "nope.pem"),
        "missing key": (["--tls-cert", cert, "--tls-key", str(tmp_path / "nope.pem")], "nope.pem"),
        "not a certificate": (["--tls-cert", str(junk), "--tls-key", key], "junk.pem"),
        "not a key": (["--tls-cert", cert, "--tls-key", str(junk)], "junk.pem"),
        "another key": (["--tls-cert", cert, "--tls-key", str(other.key)], "localhost-key.pem"),
        "encrypted key": (["--tls-cert", cert, "--tls-key", str(locked)], "locked-key.pem (--tls-key) is encrypted"),
        "expired": (["--tls-cert", str(old), "--tls-key", str(tmp_path / "old-key.pem")], "old.pem"),
        "key alone": (["--tls-key", key], "--tls-cert"),
        "cert alone": (["--tls-cert", cert], "--tls-key"),
        "dir without self-signed": (["--tls-dir", str(tmp_path)], "--tls-self-signed"),
    }[case]
    assert main(["serve", "--port", "0", "--no-admin", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pipesim: error: ") and named in err, err
    assert "Traceback" not in err


def test_serve_tls_self_signed_prints_wss_urls_and_how_to_trust_the_ca(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipesim", "serve", "--port", "0", "--tls-self-signed",
                             "--tls-dir", str(tmp_path / "tls")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["ws"].startswith("wss://127.0.0.1:") and line["http"].startswith("https://")
        assert line["admin"].startswith("https://127.0.0.1:")
        ca = tmp_path / "tls" / "ca.pem"
        health = httpx.get(line["admin"] + "/health", verify=ssl.create_default_context(cafile=ca), timeout=10)
        assert health.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pin = Tls(tmp_path / "tls" / "localhost.pem", tmp_path / "tls" / "localhost-key.pem", ca).spki_sha256()
    for hint in (f"NODE_EXTRA_CA_CERTS={ca}", f"cafile={str(ca)!r}", f"--ignore-certificate-errors-spki-list={pin}",
                 f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n pipesim -i {ca}"):
        assert hint in err, err


@pytest.mark.pipesim(tls=True, scenario=talking_scenario(), speed=20)
def test_the_pytest_fixture_starts_tls_and_hands_over_the_ca(pipesim_server: Any) -> None:
    assert pipesim_server.ws_url.startswith("wss://") and pipesim_server.admin_url.startswith("https://")
    assert Path(pipesim_server.ca_file).name == "ca.pem"
    assert pipesim_server.admin.health()["status"] == "ok"
    created = pipesim_server.admin.create_session("fixture-1")
    assert created["session_id"] == "fixture-1"

    async def watch() -> str:
        async with connect(pipesim_server.ws_url + "?session_id=fixture-1",
                           ssl=ssl.create_default_context(cafile=pipesim_server.ca_file)) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["session_id"]

    assert run(watch()) == "fixture-1"
