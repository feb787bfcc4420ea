"""What a new user of the ``pipesim`` command hits first: every mistake or surprise is one line, or none.

* An option a command does not know (every option of every command, misspelled) names it as written and
  the option meant; an unexpected argument is named too.
* ``pipesim run ... | head -1``: a reader that goes away ends the command quietly, as a Unix tool.
* ``pipesim run --out``: the summary's count of files is the files it names, which are the folder's.
* ``pipesim sweep --dask`` on a port nobody listens on fails in seconds, in one line.
* Ctrl-C stops a command at every moment past Python's own start-up, with one line, also when the command
  was started with SIGINT ignored (a non-interactive shell's background job).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipesim.cli import EXIT_BROKEN_PIPE, build_parser, main

SMALL = ["run", "baseline", "--until", "5"]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return dict(parser.commands.choices)


def _misspellings() -> list[tuple[str, str, str, list[str]]]:
    """(command, option, the option with an inner character dropped, the rest of a valid command line)."""
    cases = []
    for name, command in _commands().items():
        rest = []
        for action in command._actions:
            if not action.option_strings and action.nargs not in ("?", "*"):
                rest.append("x")  # a required positional argument
            elif action.required:
                rest += [action.option_strings[0], "a=1"]
        options = [flag for action in command._actions for flag in action.option_strings]
        for flag in options:
            if flag.startswith("--") and len(flag) > 4:
                typo = flag[:3] + flag[4:]  # --seed -> --sed: no option's prefix, so argparse does not take it
                if not any(other.startswith(typo) for other in options):
                    cases.append((name, flag, typo, rest))
    return cases


@pytest.mark.parametrize(("command", "flag", "typo", "rest"), _misspellings(),
                         ids=[f"{c}-{f}" for c, f, _, _ in _misspellings()])
def test_a_misspelled_option_is_named_with_the_one_meant(command: str, flag: str, typo: str, rest: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        main([command, *rest, typo, "3"])
    assert ended.value.code == 2
    assert capsys.readouterr().err == f"pipesim {command}: error: unknown option {typo} (did you mean {flag}?)\n"


def test_an_unknown_option_or_argument_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, line in [
        (["run", "baseline", "--zzzzzz"], "pipesim run: error: unknown option --zzzzzz (pipesim run --help lists its "
                                          "options)"),
        (["run", "baseline", "--sed=3"], "pipesim run: error: unknown option --sed (did you mean --seed?)"),
        (["validate", "baseline", "--strict"], "pipesim validate: error: unknown option --strict (pipesim validate "
                                               "--help lists its options)"),
        (["schema", "extra"], "pipesim schema: error: unexpected argument extra (pipesim schema --help says what "
                              "it takes)"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert capsys.readouterr().err == line + "\n"


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe fails: the reader has gone
    with os.fdopen(write_end, "wb") as stdout:
        done = subprocess.run([sys.executable, "-m", "pipesim", *SMALL], stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")


@pytest.mark.parametrize("ignored", [False, True], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("after_s", [0.3, 1.0])
def test_ctrl_c_stops_a_command_at_any_moment_with_one_line(ignored: bool, after_s: float) -> None:
    """Before: started with SIGINT ignored, a Ctrl-C in the first ~0.3 s (before the command line was imported)
    was lost and the run went on to exit 0; a Ctrl-C while pipesim.cli was imported ended in a traceback."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    script = Path(sys.executable).with_name("pipesim")  # the console script, as a user starts it
    proc = subprocess.Popen([str(script), "run", "baseline", "--until", "300"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint if ignored else None)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "pipesim: interrupted\n")


def test_head_takes_the_first_line_and_nothing_complains(tmp_path: Path) -> None:
    pipeline = f"{sys.executable} -m pipesim {' '.join(SMALL)} | head -1"
    done = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.startswith("scenario baseline (seed 42):") and done.stdout.count("\n") == 1
    assert done.stderr == ""


@pytest.mark.parametrize("extra", [[], ["--csv"], ["--jsonl"], ["--csv", "--jsonl"]])
def test_the_summary_counts_the_files_it_names(extra: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out), *extra]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote "))
    count, names = re.fullmatch(r"wrote (\d+) files to .*/: (.*)", line).groups()
    named = names.split(", ")
    assert int(count) == len(named) == len(set(named))
    assert sorted(named) == sorted(os.listdir(out))


@pytest.mark.timeout(15)
def test_a_dask_scheduler_nobody_runs_fails_in_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    address = "tcp://127.0.0.1:1"  # a privileged port nothing listens on: connections are refused
    assert main(["sweep", "baseline", "--set", "services.llm.capacity=4", "--dask", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pipesim: error: --dask {address}: cannot reach the Dask "
                                                   f"scheduler: ")


def _commands_with_a_seed() -> list[tuple[str, list[str]]]:
    cases = []
    for name, command in _commands().items():
        if any("--seed" in action.option_strings for action in command._actions):
            rest = ["baseline"] if any(a.dest == "scenario" for a in command._actions) else []
            cases.append((name, rest))
    return cases


@pytest.mark.parametrize(("command", "rest"), _commands_with_a_seed())
@pytest.mark.parametrize("seed", ["-1", str(2**63), "1.5"])
def test_every_seed_flag_refuses_what_no_run_can_use_in_one_line(command: str, rest: list[str], seed: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ``run --seed -1`` ran with a seed the scenario file refuses, and ``run --replications`` and
    ``sweep`` ended in numpy's traceback (SeedSequence takes no negative seed)."""
    with pytest.raises(SystemExit) as exited:
        main([command, *rest, "--seed", seed])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "--seed" in err, err
