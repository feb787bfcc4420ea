"""``pipesim.testing``: the ``pipesim_server`` fixture that ``pip install pipesim`` gives every pytest run.

The tests below run small test files with ``pytester`` as a team's own suite would: they do not load the
plugin themselves (the ``pytest11`` entry point does), ask for ``pipesim_server``, and drive the server
through its admin client.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_by_an_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("pipesim") == "pipesim.testing"


def test_every_module_imports_without_pytest() -> None:
    """``pip install pipesim`` brings no pytest: ``from pipesim.testing import AdminClient`` (standard library
    only) and every other module import all the same; only the fixtures need pytest, which loads them."""
    script = """
import importlib, pkgutil, sys
sys.modules["pytest"] = None  # import pytest raises ImportError, as where it is not installed
import pipesim
from pipesim.testing import AdminClient
assert AdminClient("http://127.0.0.1:1/__admin").url == "http://127.0.0.1:1/__admin"
for module in pkgutil.walk_packages(pipesim.__path__, "pipesim."):
    importlib.import_module(module.name)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_a_team_test_drives_the_server_through_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_team="""
        import asyncio, json
        import pytest
        from pipesim.testing import AdminError
        from websockets.asyncio.client import connect

        URLS = []

        @pytest.mark.pipesim(seed=3, speed=5, paused=True)
        def test_freeze_on_llm_executing(pipesim_server):
            admin = pipesim_server.admin
            assert pipesim_server.ws_url.startswith("ws://127.0.0.1:")
            assert admin.clock() == {"t": 0.0, "paused": True, "speed": 5.0, "next_event_t": 0.0}
            reached = admin.run_until("demo-1", {"services.llm": "executing"})
            assert reached["session"]["services"]["llm"] == "executing" and reached["clock"]["paused"]

            async def pause_from_a_page():
                async with connect(pipesim_server.ws_url + "?session_id=demo-1") as ws:
                    await ws.send(json.dumps({"type": "conversation_control", "action": "pause",
                                              "session_id": "demo-1"}))
                    while json.loads(await ws.recv()).get("status") != "paused":
                        pass
            asyncio.run(pause_from_a_page())
            sent = admin.journal(type="conversation_control", direction="in")
            assert [(e["session_id"], e["result"]) for e in sent] == [("demo-1", "applied")]
            with pytest.raises(AdminError) as err:
                admin.control("nobody", "pause")
            assert err.value.status == 404 and err.value.code == "unknown_session"
            URLS.append(pipesim_server.admin_url)

        def test_each_test_has_its_own_server(pipesim_server):
            assert pipesim_server.admin.health()["seed"] == 1   # frontend_demo's own seed: no marker here
            assert pipesim_server.admin_url not in URLS
    """)
    result = pytester.runpytest_inprocess("-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_options_fixture_sets_the_scenario_for_a_whole_module(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def pipesim_options():
            return {"scenario": "baseline", "seed": 42, "admin_token": "t0k"}
    """)
    pytester.makepyfile(test_module="""
        from pipesim.testing import AdminClient, AdminError
        import pytest

        def test_options(pipesim_server):
            assert pipesim_server.admin.health() == {"status": "ok", "kind": "live", "scenario": "baseline",
                                                      "seed": 42}
            with pytest.raises(AdminError) as err:
                AdminClient(pipesim_server.admin_url).health()   # no token
            assert err.value.status == 401
    """)
    result = pytester.runpytest_inprocess("-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
