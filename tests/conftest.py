import asyncio
import fcntl
import gc
import hashlib
import logging
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from pipesim.scenario import Scenario

matplotlib.use("Agg")  # tests never open windows


def npm_modules(folder: Path, *needed: str) -> Path:
    """``folder/node_modules`` as ``folder/package-lock.json`` pins it: ``npm ci`` when one of ``needed``
    (paths inside it) is missing or the lock is newer than the install; skips when Node.js/npm is absent.

    ``make test`` installs them before pytest starts (``make npm-packages``); when pytest runs alone, a file
    lock lets one worker install while the others wait for it (two ``npm ci`` at once break each other)."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip(f"Node.js/npm not installed: cannot install the npm packages of {folder.name}/")
    modules = folder / "node_modules"
    stamp = modules / ".package-lock.json"  # npm writes it on every install
    lock_name = "pipesim-npm-" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16] + ".lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        installed = stamp.exists() and all((modules / name).exists() for name in needed)
        if not installed or stamp.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime:
            proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"npm ci in {folder}/ failed:\n{proc.stdout}\n{proc.stderr}")
    return modules


def frontend_node_modules(*needed: str) -> Path:
    """``frontend/node_modules`` (see :func:`npm_modules`)."""
    return npm_modules(Path(__file__).resolve().parent.parent / "frontend", *needed)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """``asyncio.run(coro)``, failing the test (TimeoutError) if it takes more than ``timeout`` seconds:
    a live test that hangs must fail, not stall CI."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def talking_scenario(background: int = 0, name: str = "live-test", seed: int = 5,
                     sessions: dict[str, Any] | None = None, **extra: Any) -> Scenario:
    """Sessions that keep talking (1,000 turns, no barge-in), ``background`` of them started by the scenario
    at t = 0; ``sessions`` adds or replaces fields of the sessions section, ``extra`` replaces top-level
    sections."""
    data: dict[str, Any] = {"name": name, "seed": seed,
                            "sessions": {"arrivals": {"kind": "at_once", "count": background}, "turns": 1000,
                                         "barge_in_probability": 0.0, **(sessions or {})}}
    data.update(extra)
    return Scenario.model_validate(data)


def cyclic_garbage_kinds() -> Counter[str]:
    """What the cyclic collector finds now (and frees), counted by type as ``module.qualname``."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.fixture
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Every log record at ERROR or with a traceback, from any thread, while the test runs (the hostile-input
    tests assert there is none: a client's mistake is answered, never logged as pipesim's failure)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR or record.exc_info:
                records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


#: Debian's Chromium (``scripts/install-browser.sh``), driven by Playwright in the browser tests.
CHROMIUM = Path("/usr/bin/chromium")
#: Its flags there: no sandbox (CI runs as root), and no network of its own (updates, sync, QUIC).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_trusting(tls: Any) -> list[str]:
    """Chromium's flags that make it trust ``tls``'s certificate (a :class:`pipesim.live.tls.Tls`): a pin of
    that certificate's public key, which headless Chromium honours with a ``--user-data-dir`` (Playwright gives
    every browser one). Every other certificate is checked as ever: certificate errors are not ignored."""
    return [f"--ignore-certificate-errors-spki-list={tls.spki_sha256()}"]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A certificate for localhost, 127.0.0.1 and ::1 from a local CA (``pipesim serve --tls-self-signed``'s),
    made once per test session (per worker) in a temporary folder: a :class:`pipesim.live.tls.Tls`."""
    from pipesim.live.tls import self_signed

    return self_signed(tmp_path_factory.mktemp("tls"))
