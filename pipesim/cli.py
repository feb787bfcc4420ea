"""The ``pipesim`` command line: run | serve | replay | validate | schema | sweep | fit.

A user's mistake (a bad file, a bad flag: any :class:`~pipesim.errors.PipesimError`) prints one clear
``pipesim: error: ...`` message and exits 2; tracebacks are for pipesim's own bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipesim import __version__
from pipesim.errors import PipesimError

DESCRIPTION = """\
Simulate and test a real-time voice-agent pipeline (audio -> STT -> LLM -> TTS).

Offline, `pipesim run` simulates a scenario as fast as it can and writes DataFrames and figures;
live, `pipesim serve` is a mock backend speaking the orchestrator's WebSocket protocol on /ws.
Scenarios are YAML, TOML or JSON files, or the name of a bundled one (baseline, frontend_demo, ...).
"""


class UserError(PipesimError):
    """A mistake in a command-line argument; printed as one line, exit status 2."""


def _cmd_schema(args: argparse.Namespace) -> int:
    from pipesim.protocol import json_schemas

    if args.format == "asyncapi":
        from pipesim.live.contract import asyncapi_document

        doc = asyncapi_document()
    else:
        doc = json_schemas()
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _load(path: str) -> Any:
    from pipesim.scenario import load_scenario, scenario_path

    return load_scenario(scenario_path(path))


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipesim.scenario import ScenarioError, load_scenario

    failed = 0
    for path in args.files:
        try:
            scn = load_scenario(path)
        except ScenarioError as exc:
            failed += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
        else:
            print(f"{path}: ok ({scn.name})")
    return 1 if failed else 0


def _print_summary(res: Any) -> None:
    import pandas as pd

    c = res.counts()
    print(f"scenario {res.scenario.name} (seed {res.seed}): {len(res.sessions)} sessions, {c['turns']} turns: "
          f"{c['complete']} complete, {c['barge_in']} barge-ins, {c['failed']} failed, "
          f"{c['cancelled']} cancelled; {c['kafka_timeouts']} Kafka timeouts")
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(res.summary().to_string())


def _cmd_run(args: argparse.Namespace) -> int:
    import pipesim
    from pipesim.scenario import ScenarioError

    scn = _load(args.scenario)
    try:
        res = pipesim.simulate(scn, seed=args.seed, until=args.until, progress=None if args.progress else False)
    except ScenarioError as exc:  # e.g. a run that would not fit in memory
        raise UserError("\n".join(exc.problems)) from None
    _print_summary(res)
    if args.out:
        written = res.save(args.out, csv=args.csv)
        print(f"wrote {len(written)} files to {args.out}/ (turns, sessions, services, messages as Parquet; "
              f"trace.jsonl)")
    if args.plots:
        from pipesim.plots import save_standard_figures

        figures = save_standard_figures(res, args.plots)
        print(f"wrote {len(figures)} figures to {args.plots}/")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipesim.analysis import sweep

    scn = _load(args.scenario)
    try:
        values = [json.loads(v) for v in args.values.split(",")]
    except json.JSONDecodeError as exc:
        raise UserError(f"--values: not a comma-separated list of numbers or JSON values: {exc.msg}") from None
    table = sweep(scn, args.param, values, seeds=range(args.seeds), progress=None if args.progress else False)
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(table.to_string())
    if args.out:
        table.to_csv(args.out)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipesim.calibration import fit

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    cal = fit(args.measurements, families=families)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 45):
        print(cal.summary().drop(columns=["note"]).to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out:
        print(f"wrote {cal.save(args.out)}: run it with `pipesim run {args.out}`")
    if args.plots:
        from pathlib import Path

        folder = Path(args.plots)
        folder.mkdir(parents=True, exist_ok=True)
        figure = cal.qq_plot(pyplot=False)
        figure.savefig(folder / "qq.png", dpi=110)
        print(f"wrote {folder / 'qq.png'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipesim.live.cli import serve

    return serve(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from pipesim.live.cli import replay

    return replay(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run, "serve": _cmd_serve, "replay": _cmd_replay, "validate": _cmd_validate,
    "schema": _cmd_schema, "sweep": _cmd_sweep,
    "fit": _cmd_fit,
}


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's lines; shows an option's default where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A sub-command whose one-line summary is also its description."""
    return sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)


def _add_server_options(p: argparse.ArgumentParser) -> None:
    """Binding, pacing and who may connect: the options ``serve`` and ``replay`` share."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address or name to bind (default: 127.0.0.1, this machine only; 0.0.0.0: every "
                        "interface, better with --token)")
    p.add_argument("--port", type=_port, default=8001, help="port to listen on, 0 for any free one (default: 8001)")
    p.add_argument("--speed", type=_positive, default=1.0, help="simulated seconds per wall second (default: 1)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept WebSocket connections from pages of this origin, e.g. "
                        "https://app.example:3000; '*' accepts any, 'null' sandboxed pages; repeatable (default: "
                        "only pages of http(s)://localhost, 127.0.0.1 or [::1] on any port, and the server's own)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="also accept this name or address in the Host header, e.g. the machine's name when "
                        "binding 0.0.0.0; '*' accepts any; repeatable (default: loopback names and addresses and "
                        "--host)")
    p.add_argument("--token",
                   help="require this token to open /ws, as 'Authorization: Bearer TOKEN' or '?token=TOKEN' "
                        "(open the dashboard as http://HOST:PORT/?token=TOKEN); prefer $PIPESIM_TOKEN, "
                        "as other users can see a command line (default: $PIPESIM_TOKEN if set, else no token)")


def build_parser() -> argparse.ArgumentParser:
    """The ``pipesim`` argument parser (every sub-command, every option with its help and default)."""
    parser = argparse.ArgumentParser(prog="pipesim", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pipesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "run", "simulate a scenario offline and print the latency summary")
    p.add_argument("scenario", help="scenario file, or the name of a bundled one (baseline, load_spike, ...)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--until", type=_positive, help="stop at this simulated time, seconds")
    p.add_argument("--out", help="write DataFrames (Parquet), trace.jsonl and the scenario to this folder")
    p.add_argument("--csv", action="store_true", help="with --out: also write CSV files")
    p.add_argument("--plots", help="write the standard figures as PNG to this folder")
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = _command(sub, "serve", "the live mock backend: WebSocket on /ws, dashboard on /")
    p.add_argument("scenario", nargs="?", default="frontend_demo",
                   help="scenario file or bundled name (default: frontend_demo)")
    _add_server_options(p)
    p.add_argument("--seed", type=int, help="override the scenario's seed (default: the scenario's)")
    p.add_argument("--record", help="record every message sent to this JSON Lines file (default: none)")
    p.add_argument("--owner-only", action="store_true",
                   help="a connection may pause, resume or stop only the sessions it started itself (default: "
                        "any client may control any session, the scenario's included)")

    p = _command(sub, "replay", "serve a recorded or simulated trace over the same protocol")
    p.add_argument("file", help="a recording (serve --record) or a trace.jsonl (run --out)")
    _add_server_options(p)
    p.add_argument("--loop", action="store_true", help="start again at the end (default: play once)")

    p = _command(sub, "validate", "check scenario files; exit 1 on any problem")
    p.add_argument("files", nargs="+", metavar="SCENARIO",
                   help="scenario files (YAML, TOML, JSON) or names of bundled scenarios")

    p = _command(sub, "schema", "print the JSON Schema of every wire message")
    p.add_argument("--format", choices=["jsonschema", "asyncapi"], default="jsonschema",
                   help="jsonschema (default): one schema per message type; asyncapi: an AsyncAPI 3 document")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")

    p = _command(sub, "sweep", "run a scenario for several values of one parameter")
    p.add_argument("scenario", help="scenario file or bundled name")
    p.add_argument("param", help="dotted field path, e.g. services.llm.capacity")
    p.add_argument("values", help="comma-separated values, e.g. 4,8,12")
    p.add_argument("--seeds", type=int, default=1, help="seeds per value (0..N-1)")
    p.add_argument("--out", help="write the table as CSV")
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = _command(sub, "fit", "fit each stage's latency to measured per-turn timings; write a scenario")
    p.add_argument("measurements", help="a CSV of per-turn timings in seconds (columns end_of_utterance_delay, "
                                        "stt_service or transcription_delay, ttft, ttfb or tts_service), or a "
                                        "LiveKit session report (.json, .jsonl)")
    p.add_argument("--out", metavar="FRAGMENT.yaml",
                   help="write the calibrated scenario (runs with `pipesim run FRAGMENT.yaml`)")
    p.add_argument("--plots", metavar="DIR", help="write the Q-Q plots (qq.png) to this folder")
    p.add_argument("--families", default="lognormal,gamma,empirical",
                   help="families to try; the smallest KS statistic wins, empirical if the KS test rejects it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipesim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipesimError as exc:
        print(f"pipesim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out in a folder we may not write to
        where = f" {exc.filename}" if exc.filename else ""
        print(f"pipesim: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
