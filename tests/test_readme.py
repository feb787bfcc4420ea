"""Every example in README.md runs as written, top to bottom, as a reader starting in an empty folder would.

Twice: in this process, with the pipesim under test (``test_every_readme_example_runs``), and with a wheel
installed into a fresh virtual environment, its ``pipesim`` command run from an empty folder
(``test_readme_commands_after_install``: ``scripts/wheel-check.sh`` runs it, with ``PIPESIM_INSTALLED_BIN``
set to that environment's ``bin/``; skipped otherwise). Nothing of the checkout is in the folder: the README's
``pipesim examples`` and ``cd`` lines make it what the later commands need.

The fenced blocks are taken in document order and dispatched by their language, so a new block is covered
without editing this file:

* ``python``: executed in one namespace (a reader's session carries on from block to block). A block must
  run on its own: a server it needs is started in the block, on port 0 (as ``serve_in_background`` is).
* ``yaml``, ``toml``, ``json``: saved to a file in the folder and loaded with ``pipesim.load_scenario``;
  a JSON object with a ``type`` is a wire message instead, parsed with ``pipesim.protocol.parse_message``.
* ``bash``: every ``make ...`` line must name real Makefile targets (they are not run: they install, and
  they are *in a clone* only, as the README says); ``pip install`` lines are the install this test runs in;
  ``cd DIR`` moves on to DIR; every ``pipesim ...`` line runs, globs expanded, and must exit 0 (or N when its
  comment says ``exits N``): ``serve`` and ``replay`` in a subprocess on a free port (``--port 0``), until
  ``/healthz`` answers ``ok``, then SIGINT, which must exit 0; the others in this process (after install: each
  in a subprocess). Any other command fails the test: teach this file about it.
* Blocks without a language (formulas, sample output) are prose.

The one liberty taken: offline runs stop at ``HORIZON_S`` simulated seconds, so that a ``pipesim sweep``
of baseline runs takes seconds, not minutes: ``simulate`` is capped while a ``python`` block runs, and
``pipesim run`` and ``pipesim sweep`` lines without ``--until`` get ``--until HORIZON_S`` (replications and
sweeps run in other processes, which a patch here does not reach). A command line that gives ``--until`` runs
as written, so that what it prints (a verdict, an exit status) is what its reader sees. Every flag, output
file and code path of the examples still runs; only fewer sessions are simulated.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pipesim
import pipesim.results
from pipesim.cli import main as cli_main
from pipesim.protocol import parse_message
from pipesim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HORIZON_S = 60.0
SERVER_START_S = 60.0  # generous: CI machines are shared
#: A non-editable install's ``bin/`` (scripts/wheel-check.sh sets it): its ``pipesim`` runs the README's commands.
INSTALLED_BIN = os.environ.get("PIPESIM_INSTALLED_BIN")
#: What the README may name that only a clone has; the README marks each place *in a clone*.
CLONE_ONLY = ("benchmarks/",)
#: Commands not run again after install: a plan is minutes of simulation of bundled scenarios that the
#: in-process test runs as written; after install it would teach nothing about the install (the files and
#: names it uses are run's and check's, which are run).
AFTER_INSTALL_SKIPPED = ("plan",)


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the first line inside the fence

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S):
        line = README.read_text(encoding="utf-8").count("\n", 0, match.start(2)) + 1
        blocks.append(Block(match.group(1).lower(), match.group(2), line))
    return blocks


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def shell_lines(block: Block) -> list[tuple[int, list[str], int]]:
    """(README line, words, exit status) of each command, comments dropped, continuations joined. The exit
    status is 0 unless the command's comment says ``exits N`` (``pipesim check`` exits 1 on a violated SLO)."""
    commands: list[tuple[int, list[str], int]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        pending += raw
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        status = re.search(r"#.*\bexits (\d+)", pending)
        pending = ""
        if words:
            commands.append((start, words, int(status.group(1)) if status else 0))
    return commands


def expand_globs(words: list[str], cwd: Path) -> list[str]:
    out: list[str] = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
        out.extend(matches or [word])
    return out


def pipesim_command(installed: Path | None) -> list[str]:
    """The ``pipesim`` the README's reader runs: the installed one, or this interpreter's console script."""
    if installed is not None:
        return [str(installed / "pipesim")]
    script = Path(sys.executable).with_name("pipesim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipesim.cli"]


def run_server(argv: list[str], where: str, cwd: Path, command: list[str]) -> None:
    """Start ``pipesim serve|replay`` on a free port, wait for /healthz, stop it with SIGINT: exit 0."""
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = "0"
    else:
        argv += ["--port", "0"]
    # --tls-self-signed keeps its CA in the user's cache folder: the reader's folder stands in for it.
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / ".cache")}
    proc = subprocess.Popen([*command, *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its URLs once it is listening
        found = re.search(r"\"http\":\"(https?://\S+?/)\"", line)  # the JSON line: {"event":"listening",...}
        # Over TLS, trust the CA the server made (as its reader is told to).
        trusted = ssl.create_default_context(cafile=cwd / ".cache" / "pipesim" / "tls" / "ca.pem") \
            if found and found.group(1).startswith("https:") else None
        assert found, f"{where}: pipesim {' '.join(argv)} did not start: {line}{proc.stdout.read()}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(found.group(1) + "healthz", timeout=5, context=trusted) as response:
                    assert response.read().decode().strip() == "ok", where
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"{where}: pipesim {' '.join(argv)} exited {proc.returncode} on SIGINT:\n{out}"
        if "--record" in argv:
            recording = cwd / argv[argv.index("--record") + 1]
            assert recording.read_text().startswith('{"recording":"pipesim"'), f"{where}: no recording written"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_bash(block: Block, cwd: Path, installed: Path | None = None) -> Path:
    """Run the block's commands from ``cwd``; the folder its ``cd`` lines lead to.

    In this process (``installed`` None) the working directory follows ``cd``; with ``installed``, each
    ``pipesim`` line is that install's command, run in a subprocess from the folder.
    """
    targets = makefile_targets()
    for line, words, expected in shell_lines(block):
        where = f"README.md:{line}"
        if words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert named and set(named) <= targets, f"{where}: {' '.join(words)}: not a Makefile target"
        elif words[:2] == ["pip", "install"]:
            pass  # the install this test runs in
        elif words[0] == "cd" and len(words) == 2:
            cwd = cwd / words[1]
            assert cwd.is_dir(), f"{where}: cd {words[1]}: no such folder (an earlier line should make it)"
            if installed is None:
                os.chdir(cwd)
        elif words[0] == "pipesim":
            argv = expand_globs(words[1:], cwd)
            if argv and argv[0] in ("run", "sweep") and "--until" not in argv:
                argv += ["--until", str(HORIZON_S)]
            if argv and argv[0] in ("serve", "replay"):
                run_server(argv, where, cwd, pipesim_command(installed))
            elif installed is not None and argv[0] in AFTER_INSTALL_SKIPPED:
                continue
            elif installed is not None:
                done = subprocess.run([*pipesim_command(installed), *argv], cwd=cwd, capture_output=True, text=True)
                assert done.returncode == expected, (f"{where}: {' '.join(words)} exited {done.returncode}, not "
                                                     f"{expected}, after install:"
                                              f"\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            else:
                try:
                    status = cli_main(argv)
                except SystemExit as exc:  # argparse rejected the line
                    status = exc.code
                assert status == expected, f"{where}: {' '.join(words)} exited {status}, not {expected}"
        else:
            pytest.fail(f"{where}: {words[0]!r}: tests/test_readme.py does not know how to check this command")
    return cwd


def check_data_block(block: Block, cwd: Path) -> None:
    if block.lang == "json":
        data = json.loads(block.text)
        if isinstance(data, dict) and "type" in data:
            parse_message(block.text)
            return
    suffix = {"yaml": ".yaml", "yml": ".yaml", "toml": ".toml", "json": ".json"}[block.lang]
    path = cwd / f"readme-line-{block.line}{suffix}"
    path.write_text(block.text, encoding="utf-8")
    load_scenario(path)


#: Whether pipesim's ``simulate`` is capped at HORIZON_S now: while a ``python`` block runs (see the docstring).
_CAPPED = {"now": False}


@pytest.fixture
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the working directory, with ``simulate`` capped at HORIZON_S while ``_CAPPED``."""
    monkeypatch.chdir(tmp_path)
    real = pipesim.results.simulate

    def simulate(scenario: Any, seed: int | None = None, until: float | None = None,
                 progress: bool | None = None, out: Any = None) -> Any:
        if _CAPPED["now"]:
            until = HORIZON_S if until is None else min(until, HORIZON_S)
        return real(scenario, seed=seed, until=until, progress=progress, out=out)

    # Every module that holds simulate (``from pipesim.results import simulate``), whichever test imported it
    # first, or the cap would depend on the order tests ran in. pipesim's own names are imported on first use:
    # patch the package first, or its first use would cache the patched function and the undo put it back.
    monkeypatch.setattr(pipesim, "simulate", simulate)
    for name, module in sorted(sys.modules.items()):
        if name.startswith("pipesim.") and getattr(module, "simulate", None) is real:
            monkeypatch.setattr(module, "simulate", simulate)
    return tmp_path


def test_readme_has_examples_of_every_kind() -> None:
    langs = {b.lang for b in readme_blocks()}
    assert {"python", "bash", "yaml", "json"} <= langs


def test_every_readme_example_runs(empty_folder: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    cwd = empty_folder
    for block in readme_blocks():
        if block.lang == "python":
            _CAPPED["now"] = True
            try:
                exec(compile(block.text, block.where, "exec"), namespace)
            finally:
                _CAPPED["now"] = False
        elif block.lang in ("bash", "sh", "shell", "console"):
            cwd = run_bash(block, cwd)
        elif block.lang in ("yaml", "yml", "toml", "json"):
            try:
                check_data_block(block, cwd)
            except Exception as exc:
                pytest.fail(f"{block.where}: {block.lang} block does not load: {exc}")
        else:
            assert block.lang == "", f"{block.where}: a ```{block.lang} block: teach tests/test_readme.py to run it"


@pytest.mark.skipif(not INSTALLED_BIN, reason="scripts/wheel-check.sh runs it after a non-editable install "
                                              "(PIPESIM_INSTALLED_BIN=its bin/)")
def test_readme_commands_after_install(tmp_path: Path) -> None:
    """Every command block of the README, top to bottom, with an installed wheel's pipesim, from an empty folder
    (but for AFTER_INSTALL_SKIPPED)."""
    installed = Path(str(INSTALLED_BIN))
    found = subprocess.run([str(installed / "python"), "-c", "import pipesim; print(pipesim.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert not Path(found).resolve().is_relative_to(ROOT), f"pipesim is imported from this checkout: {found}"
    cwd = tmp_path
    for block in readme_blocks():
        if block.lang in ("bash", "sh", "shell", "console"):
            cwd = run_bash(block, cwd, installed)


def test_clone_only_examples_say_so() -> None:
    """A README paragraph naming what only a clone has (``benchmarks/``) says *in a clone*."""
    paragraphs = README.read_text(encoding="utf-8").split("\n\n")
    unmarked = [p[:80] for p in paragraphs for folder in CLONE_ONLY
                if re.search(rf"`pipesim [^`]*{folder}", p) and "*in a clone*" not in p]
    assert not unmarked, f"README paragraphs run pipesim on {CLONE_ONLY} without saying *in a clone*: {unmarked}"
