"""Every example in README.md runs as written, top to bottom, as a reader at the root of a clone would.

The fenced blocks are taken in document order, in one temporary folder laid out like a clone's root
(``scenarios/`` linked), and dispatched by their language, so a new block is covered without editing this
file:

* ``python``: executed in one namespace (a reader's session carries on from block to block). A block must
  run on its own: a server it needs is started in the block, on port 0 (as ``serve_in_background`` is).
* ``yaml``, ``toml``, ``json``: saved to a file in the folder and loaded with ``pipesim.load_scenario``;
  a JSON object with a ``type`` is a wire message instead, parsed with ``pipesim.protocol.parse_message``.
* ``bash``: every ``make ...`` line must name real Makefile targets (they are not run: they install);
  every ``pipesim ...`` line runs, globs expanded, and must exit 0 (or N when its comment says ``exits N``):
  ``serve`` and ``replay`` in a subprocess on a free port (``--port 0``), until ``/healthz`` answers ``ok``,
  then SIGINT, which must exit 0; the others in this process. Any other command fails the test: teach this
  file about it.
* Blocks without a language (formulas, sample output) are prose.

The one liberty taken: offline runs stop at ``HORIZON_S`` simulated seconds, so that a ``pipesim sweep``
of baseline runs takes seconds, not minutes: ``simulate`` is capped in this process, and ``pipesim run`` and
``pipesim sweep`` lines get ``--until HORIZON_S`` (replications and sweeps run in other processes, which a
patch here does not reach). Every flag, output file and code path of the examples still runs; only fewer
sessions are simulated.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import signal
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


def expand_globs(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out.extend(matches or [word])
    return out


def run_server(argv: list[str], where: str, cwd: Path) -> None:
    """Start ``pipesim serve|replay`` on a free port, wait for /healthz, stop it with SIGINT: exit 0."""
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = "0"
    else:
        argv += ["--port", "0"]
    script = Path(sys.executable).with_name("pipesim")  # the console script the README's reader runs
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipesim.cli"]
    proc = subprocess.Popen([*command, *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its URLs once it is listening
        found = re.search(r"\"http\":\"(http://\S+?/)\"", line)  # the JSON line: {"event":"listening",...}
        assert found, f"{where}: pipesim {' '.join(argv)} did not start: {line}{proc.stdout.read()}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(found.group(1) + "healthz", timeout=5) as response:
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


def run_bash(block: Block, cwd: Path) -> None:
    targets = makefile_targets()
    for line, words, expected in shell_lines(block):
        where = f"README.md:{line}"
        if words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            assert named and set(named) <= targets, f"{where}: {' '.join(words)}: not a Makefile target"
        elif words[0] == "pipesim":
            argv = expand_globs(words[1:])
            if argv and argv[0] in ("run", "sweep") and "--until" not in argv:
                argv += ["--until", str(HORIZON_S)]
            if argv and argv[0] in ("serve", "replay"):
                run_server(argv, where, cwd)
            else:
                try:
                    status = cli_main(argv)
                except SystemExit as exc:  # argparse rejected the line
                    status = exc.code
                assert status == expected, f"{where}: {' '.join(words)} exited {status}, not {expected}"
        else:
            pytest.fail(f"{where}: {words[0]!r}: tests/test_readme.py does not know how to check this command")


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


@pytest.fixture
def clone_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder like a clone's root, as the working directory, with offline runs capped at HORIZON_S."""
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    real = pipesim.results.simulate

    def simulate(scenario: Any, seed: int | None = None, until: float | None = None,
                 progress: bool | None = None, out: Any = None) -> Any:
        return real(scenario, seed=seed, until=HORIZON_S if until is None else min(until, HORIZON_S),
                    progress=progress, out=out)

    # pipesim's names are imported on first use: patch pipesim first, so that what it restores is the real one
    monkeypatch.setattr(pipesim, "simulate", simulate)
    monkeypatch.setattr(pipesim.results, "simulate", simulate)
    return tmp_path


def test_readme_has_examples_of_every_kind() -> None:
    langs = {b.lang for b in readme_blocks()}
    assert {"python", "bash", "yaml", "json"} <= langs


def test_every_readme_example_runs(clone_root: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    for block in readme_blocks():
        if block.lang == "python":
            exec(compile(block.text, block.where, "exec"), namespace)
        elif block.lang in ("bash", "sh", "shell", "console"):
            run_bash(block, clone_root)
        elif block.lang in ("yaml", "yml", "toml", "json"):
            try:
                check_data_block(block, clone_root)
            except Exception as exc:
                pytest.fail(f"{block.where}: {block.lang} block does not load: {exc}")
        else:
            assert block.lang == "", f"{block.where}: a ```{block.lang} block: teach tests/test_readme.py to run it"
