"""The server options are named once (:class:`pipesim.live.options.ServerOptions`): the servers take them as
keywords or as one object, ``pipesim serve`` and ``replay`` make their flags from them, and a wrong keyword is
Python's own ``TypeError``."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

import pytest
from conftest import run, talking_scenario

from pipesim.cli import build_parser
from pipesim.live import LiveServer, ReplayServer, ServerOptions, serve_in_background
from pipesim.live.options import DEFAULT_ADMIN_PORT

ONE_MESSAGE = [(0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0, "seq": 0})]


def command(name: str) -> argparse.ArgumentParser:
    return build_parser().commands.choices[name]  # type: ignore[attr-defined]


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_serve_and_replay_have_a_flag_for_every_option_that_has_one() -> None:
    wanted = {f.metadata["flag"].name: f.name for f in fields(ServerOptions) if f.metadata["flag"] is not None}
    assert {"--host", "--port", "--token", "--admin-port", "--journal-size", "--allow-origin"} <= set(wanted)
    assert set(wanted) <= flags_of(command("serve"))
    assert set(wanted) - {"--record"} <= flags_of(command("replay"))  # a replay records nothing by flag
    for f in fields(ServerOptions):
        assert f.metadata["doc"], f"{f.name} has no help text"


def test_the_command_line_gives_the_options_the_servers_are_made_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPESIM_TOKEN", "from-env")
    monkeypatch.delenv("PIPESIM_ADMIN_TOKEN", raising=False)
    args = build_parser().parse_args(["serve", "--port", "0", "--allow-origin", "http://a.test",
                                      "--allow-origin", "http://b.test", "--journal-size", "5"])
    opts = ServerOptions.from_args(args)
    assert opts == ServerOptions(port=0, allow_origins=("http://a.test", "http://b.test"), token="from-env",
                                 admin_port=0, journal_size=5)
    default = ServerOptions.from_args(build_parser().parse_args(["replay", "x.jsonl", "--token", "given"]))
    assert (default.port, default.admin_port, default.token, default.record) == (8001, DEFAULT_ADMIN_PORT,
                                                                                 "given", None)
    assert ServerOptions.from_args(build_parser().parse_args(["serve", "--no-admin"])).admin_port is None


def test_a_server_takes_the_options_as_keywords_as_an_object_or_both() -> None:
    scenario = talking_scenario()
    assert LiveServer(scenario, port=0, token="t").options == ServerOptions(port=0, token="t")
    base = ServerOptions(port=0, token="t", allow_hosts=["pipesim.test"])
    server = LiveServer(scenario, options=base, token="u")
    assert (server.options.token, server.access.token, server.access.allow_hosts) == ("u", "u",
                                                                                     frozenset({"pipesim.test"}))
    replay = ReplayServer(ONE_MESSAGE, options=base, client_queue=7)
    assert (replay.port, replay.hub.client_queue, replay.access.token) == (0, 7, "t")
    with pytest.raises(TypeError, match="LiveServer\\(\\) got an unexpected keyword argument 'prot'"):
        LiveServer(scenario, prot=0)
    with pytest.raises(TypeError, match="ReplayServer\\(\\) got an unexpected keyword argument 'tokn'"):
        ReplayServer(ONE_MESSAGE, tokn="x")


def test_background_servers_take_the_options_object() -> None:
    bg = serve_in_background(talking_scenario(), options=ServerOptions(port=0, admin_port=0))
    try:
        assert bg.port != 0 and bg.server.admin_url is not None
    finally:
        bg.stop()


def test_options_reach_the_listening_server() -> None:
    async def main() -> tuple[str, int]:
        async with LiveServer(talking_scenario(), options=ServerOptions(port=0, host="127.0.0.1")) as server:
            return server.url, server.port

    url, port = run(main())
    assert port != 0 and url == f"ws://127.0.0.1:{port}/ws"


@pytest.mark.pipesim(scenario=talking_scenario(), options=ServerOptions(journal_size=0, token="t"))
def test_the_pytest_fixture_takes_the_options_object(pipesim_server: Any) -> None:
    server = pipesim_server.background.server
    assert server.journal is None and server.access.token == "t" and server.port != 8001  # its port 0 wins
