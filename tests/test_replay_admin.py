"""A replay driven through the admin API: pause, speed and seek (``POST /__admin/replay/seek``) reach the
ReplayServer's playback, and a connected client ends up with the state as of the time sought."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import pipesim
from pipesim.live import LiveClient, ReplayServer, load_replay

if importlib.util.find_spec("pipesim.live.admin") is None:
    pytest.skip("pipesim.live.admin (the admin API) is not in this tree", allow_module_level=True)

from test_live_playback import SMALL, fold, run  # noqa: E402  (after the skip: it needs no admin API)


async def _call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    def call() -> tuple[int, Any]:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await asyncio.to_thread(call)  # the server runs on this loop: do not block it


def test_pause_speed_and_seek_through_the_admin_api(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    pipesim.simulate(SMALL, progress=False).trace.to_jsonl(path)
    items = load_replay(path)
    start, end = items[0][0], items[-1][0]

    async def main() -> None:
        async with ReplayServer(path, port=0, speed=10, admin_port=0) as server, LiveClient(server.url) as client:
            admin = server.admin_url
            await client.expect(lambda m: len(client.messages) >= 5, timeout=20)
            status, clock = await _call(f"{admin}/clock/pause", "POST")
            assert status == 200 and clock["paused"] is True
            status, clock = await _call(f"{admin}/clock/speed", "POST", {"speed": 3})
            assert status == 200 and clock["speed"] == 3
            for t in (start + 0.6 * (end - start), start + 0.1 * (end - start)):
                status, clock = await _call(f"{admin}/replay/seek", "POST", {"t": t})
                assert status == 200 and clock["t"] == pytest.approx(t), clock
                await asyncio.sleep(0.2)
                assert fold(client.messages) == fold([m for time, m in items if time < t])
            status, body = await _call(f"{admin}/clock/step", "POST")
            assert status == 409 and body["error"]["code"] == "unsupported", body
            status, clock = await _call(f"{admin}/clock/resume", "POST")
            assert status == 200 and clock["paused"] is False

    run(main())
