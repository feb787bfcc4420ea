"""The example Playwright test a frontend team copies (``frontend/tests/dashboard.spec.ts``), run as CI runs it.

``npx playwright test`` in ``frontend/``: Playwright's ``webServer`` starts ``pipesim serve frontend_demo`` with
the admin API on free ports, and the spec drives the bundled dashboard in Debian's headless Chromium: the clock
frozen at "llm executing" through the admin API, the page showing it, Pause clicked on the page, the journal
saying the page sent ``conversation_control`` pause, reset; then a stub refusing the page's first pause and the
journal counting the pauses sent. Run here so that the example cannot rot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import frontend_node_modules

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_example_playwright_test_passes() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run `make browser` (scripts/install-browser.sh, as root)")
    if importlib.util.find_spec("pipesim.live.admin") is None:
        pytest.skip("pipesim.live.admin (the admin API the example drives) is not in this tree")
    modules = frontend_node_modules(".bin/playwright", "@playwright/test", ".bin/tsc")
    pipesim = Path(sys.executable).parent / "pipesim"
    env = {**os.environ, "CI": "1", "CHROMIUM": str(CHROMIUM),
           "PIPESIM": str(pipesim) if pipesim.exists() else shutil.which("pipesim") or "pipesim",
           "PIPESIM_PORT": str(_free_port()), "PIPESIM_ADMIN_PORT": str(_free_port())}
    proc = subprocess.run([str(modules / ".bin" / "playwright"), "test"], cwd=FRONTEND, env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, f"npx playwright test failed:\n{proc.stdout}\n{proc.stderr}"
    assert "2 passed" in proc.stdout, proc.stdout
