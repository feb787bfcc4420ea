"""The ``pipesim`` command line: run | serve | replay | validate | schema | sweep | check | plan | fit | record | load |
examples.

A user's mistake (a bad file, a bad flag: any :class:`~pipesim.errors.PipesimError`) prints one clear
``pipesim: error: ...`` message and exits 2; tracebacks are for pipesim's own bugs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipesim import __version__
from pipesim.argtypes import bounded as _bounded
from pipesim.errors import PipesimError

DESCRIPTION = """\
Simulate and test a real-time voice-agent pipeline (audio -> STT -> LLM -> TTS).

Offline, `pipesim run` simulates a scenario as fast as it can and writes DataFrames and figures;
live, `pipesim serve` is a mock backend speaking the orchestrator's WebSocket protocol on /ws.
Scenarios are YAML, TOML or JSON files, or the name of a bundled one (baseline, frontend_demo, ...).
"""


#: The exit status when standard output's reader has gone: a shell's for a tool ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


class UserError(PipesimError):
    """A mistake in a command-line argument; printed as one line, exit status 2."""


def _cmd_schema(args: argparse.Namespace) -> int:
    from pipesim.protocol import json_schemas

    if args.format == "openapi" and args.dialect != "seed":
        raise UserError("--format openapi is the admin API's document, which has no dialect: drop --dialect")
    if args.dialect == "rtvi":
        from pipesim.live.rtvi_contract import rtvi_asyncapi_document, rtvi_json_schemas

        doc = rtvi_asyncapi_document() if args.format == "asyncapi" else rtvi_json_schemas()
    elif args.format == "asyncapi":
        from pipesim.live.contract import asyncapi_document

        doc = asyncapi_document()
    elif args.format == "openapi":
        from pipesim.live.admin import openapi

        doc = openapi()
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
    for cause, n in res.failures().items():
        print(f"  failed, {cause}: {n}")
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(res.summary().to_string())
    from pipesim.analysis import stale_work_share

    stale = stale_work_share(res.requests)
    stale = stale[stale > 0]
    if len(stale):
        shares = ", ".join(f"{svc} {share:.1%}" for svc, share in stale.items())
        print(f"stale work: {shares} of the worker time (requests served after their turn gave up on them)")


def _parse_value(path: str, text: str, as_list: bool = False) -> Any:
    import yaml

    try:
        return yaml.safe_load(f"[{text}]" if as_list else text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a value"
        raise UserError(f"--set {path}={text}: not a YAML/JSON value: {problem}") from None


def _overrides(assignments: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``--set PATH=VALUE`` flags as a :meth:`Scenario.override` mapping (values parsed as YAML)."""
    return {path: _parse_value(path, text) for path, text in assignments}


def _grid(assignments: Sequence[tuple[str, str]]) -> dict[str, list[Any]]:
    """``--set PATH=V1,V2,...`` flags as a sweep grid (a YAML flow list: ``[[0, 1], [60, 6]]`` is one value)."""
    grid = {}
    for path, text in assignments:
        values = _parse_value(path, text, as_list=True)
        if not values or None in values:
            raise UserError(f"--set {path}={text}: give comma-separated values, e.g. {path}=4,8,12")
        grid[path] = values
    return grid


def _assignment(text: str) -> tuple[str, str]:
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE, e.g. services.llm.capacity=8, got {text!r}")
    return path, value


_positive = _bounded(float, lambda v: 0 < v < math.inf, "> 0")
_seconds = _bounded(float, lambda v: 0 <= v < math.inf, ">= 0 seconds")
_count = _bounded(int, lambda v: v >= 1, ">= 1", "a whole number")
#: A scenario's seed: what numpy's SeedSequence takes and a run folder stores (a 64-bit integer).
_seed = _bounded(int, lambda v: 0 <= v < 2**63, "0..2**63-1", "a whole number")


def _wide_tables() -> Any:
    """Wide enough for a summary table: pandas does not wrap it."""
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 20)


def _cmd_run(args: argparse.Namespace) -> int:
    import pipesim
    from pipesim.scenario import ScenarioError

    scn = _load(args.scenario)
    if args.set:
        scn = scn.override(_overrides(args.set))
    if args.replications is not None:
        if args.out or args.plots:
            raise UserError("--out and --plots write one run: leave out --replications (pick a run with --seed)")
        reps = pipesim.replicate(scn, n=args.replications, warmup_s=args.warmup or 0.0, seed=args.seed,
                                 workers=args.workers, progress=None if args.progress else False, until=args.until)
        with _wide_tables():
            print(reps)
        return 0
    if args.warmup is not None or args.workers is not None:
        raise UserError("--warmup and --workers go with --replications N")
    try:
        res = pipesim.simulate(scn, seed=args.seed, until=args.until, progress=None if args.progress else False,
                               out=args.out)  # with --out, the trace streams to the folder as the run goes
    except ScenarioError as exc:  # e.g. a run that would not fit in memory
        raise UserError("\n".join(exc.problems)) from None
    _print_summary(res)
    if args.out:
        written = res.save(args.out, csv=args.csv, jsonl=args.jsonl)
        print(f"wrote {len(written)} files to {args.out}/: {', '.join(path.name for path in written)}")
    if args.plots:
        from pipesim.plots import save_standard_figures

        figures = save_standard_figures(res, args.plots)
        print(f"wrote {len(figures)} figures to {args.plots}/")
    return 0


#: Seconds ``--dask ADDRESS`` tries to reach the scheduler (a refused port is retried until then).
DASK_CONNECT_TIMEOUT_S = 5


def _dask_client(address: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise UserError("--dask needs the 'distributed' package: pip install 'pipesim[dask]'") from None
    try:
        return distributed.Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--dask {address}: cannot reach the Dask scheduler: {exc}") from None


def _cmd_sweep(args: argparse.Namespace) -> int:
    import pipesim

    scn = _load(args.scenario)
    grid = _grid(args.set)
    if args.dask and args.workers is not None:
        raise UserError("--workers is for local processes; a Dask cluster has its own workers")
    client = _dask_client(args.dask) if args.dask else None
    try:
        result = pipesim.sweep(scn, grid, replications=args.replications, warmup_s=args.warmup, seed=args.seed,
                               workers=args.workers, client=client, progress=False if args.no_progress else None,
                               until=args.until)
    finally:
        if client is not None:
            client.close()
    with _wide_tables():
        print(result)
    if args.out:
        result.runs.to_csv(args.out, index=False)
        print(f"wrote {len(result.runs)} runs to {args.out} (one row per run, seconds)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from pipesim.gate import check, write_reports

    scn = _load(args.scenario)
    if args.set:
        scn = scn.override(_overrides(args.set))
    if args.replications is not None and (args.min_replications is not None or args.max_replications is not None):
        raise UserError("--replications N runs exactly N: leave out --min-replications and --max-replications")
    lowest, highest = args.min_replications or 3, args.max_replications or 30
    if lowest > highest:
        raise UserError(f"--min-replications {lowest} is more than --max-replications {highest}")
    threshold = {} if args.collapse_share is None else {"collapse_threshold": args.collapse_share}
    result = check(scn, args.slo, replications=args.replications, min_replications=lowest,
                   max_replications=highest, seed=args.seed, until=args.until, warmup_s=args.warmup,
                   workers=args.workers, collapse_violates=not args.allow_collapse,
                   progress=None if args.progress else False, **threshold)
    print(result)
    write_reports(result, args.junit, args.json)
    return result.exit_code


def _cost(text: str) -> tuple[str, float]:
    path, sep, value = text.partition("=")
    try:
        cost = float(value)
    except ValueError:
        cost = math.nan
    if not sep or not path or not 0 <= cost < math.inf:
        raise argparse.ArgumentTypeError(f"expected PATH=COST, a number >= 0 per unit, e.g. "
                                         f"services.llm.capacity=2.4, got {text!r}")
    return path, cost


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipesim.planning import DEFAULT_UNTIL_S, DEFAULT_WARMUP_S, headroom, plan, write_json
    from pipesim.vocabulary import SERVICES

    scn = _load(args.scenario)
    if args.set:
        scn = scn.override(_overrides(args.set))
    vary = dict(args.vary)
    for svc in (s.strip() for s in (args.services or "").split(",") if s.strip()):
        if svc not in SERVICES:
            raise UserError(f"--services {args.services}: no such service {svc!r} (services: {', '.join(SERVICES)})")
        vary.setdefault(f"services.{svc}.capacity", "1..64")
    if args.find and vary:
        raise UserError("--find asks for the highest load at fixed capacities: leave out --vary and --services "
                        "(set capacities with --set)")
    if not args.find and not vary:
        raise UserError("nothing to vary: give --vary PATH=LOW..HIGH (e.g. --vary services.llm.capacity=1..64) "
                        "or --find PATH")
    if args.dask and args.workers is not None:
        raise UserError("--workers is for local processes; a Dask cluster has its own workers")
    options: dict[str, Any] = {
        "load": _overrides(args.load), "seed": args.seed, "max_replications": args.max_replications,
        "until": DEFAULT_UNTIL_S if args.until is None else args.until,
        "warmup_s": DEFAULT_WARMUP_S if args.warmup is None else args.warmup,
        "workers": args.workers or 1, "progress": False if args.no_progress else None}
    client = _dask_client(args.dask) if args.dask else None
    try:
        if args.find:
            if args.cost:
                raise UserError("--cost prices the varied paths of a plan: --find has none")
            result = headroom(scn, args.slo, find=args.find, client=client, **options)
        else:
            costs = {f"services.{p}.capacity" if p in SERVICES else p: c for p, c in args.cost}
            result = plan(scn, args.slo, vary=vary, costs=costs, client=client, **options)
    finally:
        if client is not None:
            client.close()
    print(result)
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plots and result.evaluations:
        from pathlib import Path

        folder = Path(args.plots)
        folder.mkdir(parents=True, exist_ok=True)
        result.plot(pyplot=False).savefig(folder / f"{result.question}.png", dpi=110)
        print(f"wrote {folder / f'{result.question}.png'}")
    return result.exit_code


def _cmd_fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipesim.calibration import apply, capacity_warnings, fit

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    cal = fit(args.measurements, families=families)
    from pipesim.errors import ScenarioError

    try:
        calibrated = apply(args.base, cal)  # a bad --base is an error before anything is written
    except ScenarioError as exc:
        raise UserError("\n".join(f"--base {args.base}: {problem}" for problem in exc.problems)) from None
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 45):
        print(cal.summary().drop(columns=["note"]).to_string(float_format=lambda v: f"{v:.4g}"), flush=True)
    for warning in cal.warnings + capacity_warnings(calibrated):
        print(f"pipesim: warning: {warning}", file=sys.stderr)
    if args.out:
        print(f"wrote {cal.save(args.out, base=args.base)} (the fitted fields on {calibrated.name}'s sessions and "
              f"capacities): run it with `pipesim run {args.out}`")
    if args.plots:
        from pathlib import Path

        folder = Path(args.plots)
        folder.mkdir(parents=True, exist_ok=True)
        figure = cal.qq_plot(pyplot=False)
        figure.savefig(folder / "qq.png", dpi=110)
        print(f"wrote {folder / 'qq.png'}")
    return 0


#: What ``pipesim examples DIR`` copies, by folder: DIR is then laid out as a clone's root, so the README's
#: commands and the notebooks run there as written.
_EXAMPLES = {"scenarios": ("*.yaml", "*.csv"), "notebooks": ("*.ipynb",)}


def _cmd_examples(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    package, dest = Path(__file__).resolve().parent, Path(args.dir)
    copies = [(source, dest / folder / source.name)
              for folder, patterns in _EXAMPLES.items()
              for source in sorted(p for pattern in patterns for p in (package / folder).glob(pattern))]
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder")
    existing = [str(target) for _, target in copies if target.exists()]
    if existing and not args.force:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise UserError(f"{shown} already exist; --force overwrites them")
    for source, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        print(f"wrote {target}")
    print(f"""
{dest}/ is laid out as the root of a pipesim clone: the README's commands run there as written. Next:
  cd {dest}
  pipesim run scenarios/baseline.yaml --plots out/plots      # edit it first: the scenarios are commented
  pipesim validate scenarios/*.yaml
  pipesim fit scenarios/measurements_example.csv --out out/calibrated.yaml
  pip install 'pipesim[notebooks]' && jupyter lab notebooks/""")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipesim.live.cli import serve

    return serve(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from pipesim.live.cli import replay

    return replay(args)


def _cmd_record(args: argparse.Namespace) -> int:
    from pipesim.live.record_client import record

    return record(args)


def _cmd_load(args: argparse.Namespace) -> int:
    from pipesim.live.load import load_command

    return load_command(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run, "serve": _cmd_serve, "replay": _cmd_replay, "validate": _cmd_validate,
    "schema": _cmd_schema, "sweep": _cmd_sweep, "fit": _cmd_fit, "record": _cmd_record,
    "load": _cmd_load, "check": _cmd_check, "plan": _cmd_plan, "examples": _cmd_examples,
}


class _Parser(argparse.ArgumentParser):
    """pipesim's parsers: a mistake is one line; an option its command does not know is named, with the
    closest option the command has (argparse would print the top-level usage and ``unrecognized arguments``)."""

    commands: Any = None  # the sub-parsers' action: its ``choices`` map each command to its parser

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def error(self, message: str) -> Any:
        """Every mistake on the command line is one line (argparse would print the usage above it)."""
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help says what it takes)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self.commands.choices[parsed.command]
            known = [flag for action in command._actions for flag in action.option_strings]
            flags = [extra.partition("=")[0] for extra in extras if extra.startswith("-")]  # the rest: their values?
            problems = [f"unknown option {flag} " + (f"(did you mean {close[0]}?)" if close else
                                                     f"({command.prog} --help lists its options)")
                        for flag in flags for close in [difflib.get_close_matches(flag, known, n=1)]]
            if not flags:
                problems = [f"unexpected argument{'s' if len(extras) > 1 else ''} {' '.join(extras)} "
                            f"({command.prog} --help says what it takes)"]
            self.exit(2, f"{command.prog}: error: {'; '.join(problems)}\n")
        return parsed


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's lines; shows an option's default where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A sub-command whose one-line summary is also its description."""
    return sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)


def _add_server_options(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """The options ``serve`` and ``replay`` share: pacing, and the server options (named once, with their
    flags, in :class:`pipesim.live.options.ServerOptions`)."""
    from pipesim.live.options import ServerOptions

    p.add_argument("--speed", type=_positive, default=1.0, help="simulated seconds per wall second (default: 1)")
    ServerOptions.add_arguments(p, skip)


def build_parser() -> argparse.ArgumentParser:
    """The ``pipesim`` argument parser (every sub-command, every option with its help and default)."""
    parser = _Parser(prog="pipesim", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pipesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "run", "simulate a scenario offline and print the latency summary")
    p.add_argument("scenario", help="scenario file, or the name of a bundled one (baseline, load_spike, ...)")
    p.add_argument("--seed", type=_seed, help="override the scenario's seed")
    p.add_argument("--until", type=_positive, help="stop at this simulated time, seconds")
    p.add_argument("--out", help="stream the trace to this folder as the run goes, then write every table "
                   "(Parquet) and the scenario there")
    p.add_argument("--csv", action="store_true", help="with --out: also write CSV files")
    p.add_argument("--jsonl", action="store_true", help="with --out: also write the trace as trace.jsonl")
    p.add_argument("--plots", help="write the standard figures as PNG to this folder")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--set", action="append", type=_assignment, default=[], metavar="PATH=VALUE",
                   help="override a scenario field by its dotted path, e.g. services.llm.capacity=8 (the value "
                        "is read as YAML/JSON); repeatable")
    p.add_argument("--replications", type=_count, metavar="N",
                   help="run N independent replications (seeds derived from --seed or the scenario's) and print "
                        "each figure's mean with its 95%% confidence interval")
    p.add_argument("--warmup", type=_seconds, metavar="S",
                   help="with --replications: leave out turns whose utterance ended in the first S seconds "
                        "(default: 0)")
    p.add_argument("--workers", type=_count, metavar="N",
                   help="with --replications: processes to run them in (default: one per CPU)")

    p = _command(sub, "serve", "the live mock backend: WebSocket on /ws, dashboard on /")
    p.add_argument("scenario", nargs="?", default="frontend_demo",
                   help="scenario file or bundled name (default: frontend_demo)")
    _add_server_options(p)
    p.add_argument("--seed", type=_seed, help="override the scenario's seed (default: the scenario's)")
    p.add_argument("--owner-only", action="store_true",
                   help="a connection may pause, resume or stop only the sessions it started itself (default: "
                        "any client may control any session, the scenario's included)")
    p.add_argument("--forget-after", type=_seconds, default=60.0, metavar="S",
                   help="forget a stopped session S simulated seconds after it stopped, so that memory stays "
                        "bounded (its id stays refused for start; default: 60)")
    p.add_argument("--trace-limit", type=_bounded(int, lambda v: v >= 0, ">= 0", "a whole number"),
                   default=200_000, help="keep only this many of the most recent events and service samples "
                                         "(and a sixteenth as many turns) in the server's trace, so that its "
                                         "memory stays bounded (0: keep everything)")
    p.add_argument("--no-bot-audio", action="store_true",
                   help="send RTVI clients no bot audio (default: while the bot speaks, synthetic speech-like "
                        "24 kHz PCM, about 48 KB/s per speaking session)")

    p = _command(sub, "replay", "serve a recorded or simulated trace over the same protocol")
    p.add_argument("file", help="a recording (serve --record), a trace.jsonl or a run --out folder")
    _add_server_options(p, skip=["record"])
    p.add_argument("--loop", action="store_true", help="start again at the end (default: play once)")

    p = _command(sub, "record", "record what a server of this protocol (a real orchestrator) broadcasts, as a "
                                "client, for pipesim replay")
    p.add_argument("url", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8001/ws")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the recording to write (JSON Lines, as serve --record writes)")
    p.add_argument("--session-id", action="append", default=[], metavar="ID",
                   help="record only this session; repeatable (default: every session)")
    p.add_argument("--retries", type=_bounded(int, lambda v: v >= 0, ">= 0", "a whole number"), default=10,
                   metavar="N", help="reconnection attempts in a row before giving up when the connection "
                                     "drops; 0: never reconnect")
    p.add_argument("--max-backoff", type=_bounded(float, lambda v: 0.5 <= v < math.inf, ">= 0.5 seconds"),
                   default=10.0, metavar="S", help="longest wait between reconnection attempts, seconds (they "
                                                   "start at up to 0.5 s and double, with jitter)")
    p.add_argument("--token", help="send 'Authorization: Bearer TOKEN' (default: $PIPESIM_TOKEN if set)")

    p = _command(sub, "load", "load-test a pipesim serve: session clients each starting and watching its own "
                              "session, plus dashboards; prints messages/s, lost, latency, pacer lag")
    p.add_argument("url", nargs="?", default="ws://127.0.0.1:8001/ws",
                   help="the server's WebSocket URL (default: ws://127.0.0.1:8001/ws)")
    p.add_argument("--sessions", type=_bounded(int, lambda v: 1 <= v <= 10_000, "1..10000", "a whole number"),
                   default=100, metavar="N", help="session clients, each starting and watching its own session")
    p.add_argument("--dashboards", type=_bounded(int, lambda v: 0 <= v <= 50, "0..50", "a whole number"),
                   default=2, metavar="D", help="dashboard clients watching every session (a process each)")
    p.add_argument("--duration", type=_bounded(float, lambda v: 1 <= v <= 3600, "1..3600 seconds"), default=10.0,
                   metavar="S", help="measurement window, wall seconds")
    p.add_argument("--warmup", type=_bounded(float, lambda v: 0 <= v <= 600, "0..600 seconds"), default=2.0,
                   metavar="S", help="wall seconds between the last connection and the window")
    p.add_argument("--workers", type=_bounded(int, lambda v: 1 <= v <= 64, "1..64", "a whole number"), default=4,
                   metavar="W", help="processes the session clients are spread over")
    p.add_argument("--token", help="send 'Authorization: Bearer TOKEN' (default: $PIPESIM_TOKEN if set)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")

    p = _command(sub, "validate", "check scenario files; exit 1 on any problem")
    p.add_argument("files", nargs="+", metavar="SCENARIO",
                   help="scenario files (YAML, TOML, JSON) or names of bundled scenarios")

    p = _command(sub, "schema", "print the JSON Schema of every wire message")
    p.add_argument("--format", choices=["jsonschema", "asyncapi", "openapi"], default="jsonschema",
                   help="jsonschema (default): one schema per message type; asyncapi: an AsyncAPI 3 document; "
                        "openapi: the admin API's OpenAPI document")
    p.add_argument("--dialect", choices=["seed", "rtvi"], default="seed",
                   help="seed (default): the orchestrator's protocol on /ws; rtvi: Pipecat's RTVI on /rtvi")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")

    p = _command(sub, "sweep", "run a scenario over a grid of parameter values, with replications and "
                               "confidence intervals")
    p.add_argument("scenario", help="scenario file or bundled name")
    p.add_argument("--set", action="append", type=_assignment, required=True, metavar="PATH=V1,V2,...",
                   help="a dotted field path and its values, e.g. services.llm.capacity=4,8,12 (each read as "
                        "YAML/JSON); repeat for a grid: every combination runs")
    p.add_argument("--replications", type=_count, default=10, metavar="N",
                   help="runs per grid point; replication r has the same seed at every point (common random "
                        "numbers)")
    p.add_argument("--warmup", type=_seconds, default=0.0, metavar="S",
                   help="leave out turns whose utterance ended in the first S seconds")
    p.add_argument("--seed", type=_seed, help="base seed of the replications (default: the scenario's)")
    p.add_argument("--until", type=_positive, help="stop every run at this simulated time, seconds")
    p.add_argument("--workers", type=_count, metavar="N", help="local processes (default: one per CPU)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on this Dask scheduler instead, e.g. tcp://HOST:8786 (needs pipesim[dask], and "
                        "pipesim on every worker)")
    p.add_argument("--out", metavar="FILE.csv", help="write one row per run (parameters, seed, figures in seconds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")

    p = _command(sub, "check", "judge service-level objectives from replications: exit 0 when every SLO is met, "
                               "1 when one is violated, 3 when some stay undecided, 2 on a usage or file error")
    p.add_argument("scenario", help="scenario file or bundled name (its slo: list is judged, with --slo)")
    p.add_argument("--slo", action="append", default=[], metavar="'FIGURE OP VALUE'",
                   help="an objective, e.g. 'e2e_latency_p95 <= 1.5s', 'failed_share <= 0.05', 'goodput >= 2.8'; "
                        "replaces the scenario's SLO on the same figure and direction; repeatable")
    p.add_argument("--set", action="append", type=_assignment, default=[], metavar="PATH=VALUE",
                   help="override a scenario field by its dotted path, e.g. services.llm.capacity=8; repeatable")
    p.add_argument("--replications", type=_count, metavar="N", help="run exactly N replications")
    p.add_argument("--min-replications", type=_count, metavar="N",
                   help="replications before any verdict (default: 3)")
    p.add_argument("--max-replications", type=_count, metavar="N",
                   help="add replications one at a time until every SLO is decided or N ran (default: 30)")
    p.add_argument("--seed", type=_seed,
                   help="base seed of the replications (default: the scenario's)")
    p.add_argument("--until", type=_positive, help="stop every run at this simulated time, seconds")
    p.add_argument("--warmup", type=_seconds, default=0.0, metavar="S",
                   help="leave out turns whose utterance ended in the first S seconds")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="processes per round of replications (the verdicts do not depend on it)")
    p.add_argument("--collapse-share", type=_bounded(float, lambda v: 0 <= v < 1, "a share in [0, 1)"),
                   metavar="X", help="a run collapsed when more than this share of the turns that started in its "
                                     "last third failed by timeout (default: 0.5)")
    p.add_argument("--allow-collapse", action="store_true",
                   help="judge a configuration with collapsed runs by its figures alone (default: it violates "
                        "every SLO)")
    p.add_argument("--junit", metavar="FILE", help="write the verdicts as JUnit XML (one testcase per SLO)")
    p.add_argument("--json", metavar="FILE", help="write the verdicts and figures as JSON")
    p.add_argument("--progress", action="store_true", help="show a progress bar")

    p = _command(sub, "plan", "the least-cost configuration whose replications meet every SLO, or with --find the "
                              "highest load that still does (exit 0 with an answer, 1 without, 2 on a usage or "
                              "file error)")
    p.add_argument("scenario", help="scenario file or bundled name (its slo: list is judged, with --slo)")
    p.add_argument("--slo", action="append", default=[], metavar="'FIGURE OP VALUE'",
                   help="an objective, as for pipesim check; repeatable")
    p.add_argument("--vary", action="append", type=_assignment, default=[], metavar="PATH=LOW..HIGH",
                   help="a dotted path to plan and its values: integers LOW..HIGH, or V1,V2,...; e.g. "
                        "services.llm.capacity=1..64; repeatable")
    p.add_argument("--services", metavar="stt,llm,tts",
                   help="shorthand: --vary services.X.capacity=1..64 for each service named")
    p.add_argument("--cost", action="append", type=_cost, default=[], metavar="PATH=COST",
                   help="cost of one unit of a varied path, e.g. services.llm.capacity=2.4 (or llm=2.4; default: "
                        "1 each); repeatable")
    p.add_argument("--load", action="append", type=_assignment, default=[], metavar="PATH=VALUE",
                   help="the load to plan for, e.g. sessions.arrivals.rate_per_s=3 (a scenario override); "
                        "repeatable")
    p.add_argument("--find", metavar="PATH",
                   help="instead of a plan, the highest value of PATH (e.g. sessions.arrivals.rate_per_s) at which "
                        "every SLO is met, by bisection, the capacities as the scenario (and --set) has them")
    p.add_argument("--set", action="append", type=_assignment, default=[], metavar="PATH=VALUE",
                   help="override a scenario field by its dotted path; repeatable")
    p.add_argument("--max-replications", type=_count, default=30, metavar="N",
                   help="replications per configuration at most (added until every SLO is decided)")
    p.add_argument("--seed", type=_seed,
                   help="base seed of the replications, the same for every configuration (default: the scenario's)")
    p.add_argument("--until", type=_positive, help="stop every run at this simulated time, seconds (default: 150)")
    p.add_argument("--warmup", type=_seconds, metavar="S",
                   help="leave out turns whose utterance ended in the first S seconds (default: 30)")
    p.add_argument("--workers", type=_count, metavar="N",
                   help="processes per round of replications (default: 1; the answer does not depend on it)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on this Dask scheduler instead, e.g. tcp://HOST:8786 (needs pipesim[dask])")
    p.add_argument("--json", metavar="FILE", help="write the answer and every configuration evaluated as JSON")
    p.add_argument("--plots", metavar="DIR", help="write the SLO figures against each varied value (plan.png, "
                                                  "or headroom.png with --find)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")

    p = _command(sub, "examples", "copy the bundled scenarios, measurement CSVs and notebooks into a folder, "
                                  "as files to edit")
    p.add_argument("dir", metavar="DIR", help="the folder to write scenarios/ and notebooks/ into (made if needed)")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist (default: refuse)")

    p = _command(sub, "fit", "fit each stage's latency to measured per-turn timings; write a scenario")
    p.add_argument("measurements", help="a CSV of per-turn timings in seconds (columns end_of_utterance_delay, "
                                        "stt_service or transcription_delay, ttft, ttfb or tts_service), a "
                                        "LiveKit session report (.json, .jsonl), a pipesim recording "
                                        "(serve --record, pipesim record: end of utterance and STT), or the "
                                        "name of bundled measurements (measurements_example)")
    p.add_argument("--out", metavar="SCENARIO.yaml",
                   help="write the calibrated scenario (runs with `pipesim run SCENARIO.yaml`)")
    p.add_argument("--base", default="baseline", metavar="SCENARIO",
                   help="the scenario whose sessions, capacities and other fields the calibrated one keeps (a file "
                        "or a bundled name); fit warns when the fitted latencies overload its capacities")
    p.add_argument("--plots", metavar="DIR", help="write the Q-Q plots (qq.png) to this folder")
    p.add_argument("--families", default="lognormal,gamma,empirical",
                   help="families to try; the smallest KS statistic wins, empirical if the KS test rejects it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipesim`` console script."""
    try:
        args = build_parser().parse_args(argv)
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that has gone shows here, not as Python's complaint at exit
        return status
    except BrokenPipeError:  # `pipesim run baseline | head -1`: the reader has what it wanted
        # End quietly, as a Unix tool ended by SIGPIPE does (and with its status, 128 + 13); stdout goes to
        # devnull, or Python's flush at exit fails again ("Note on SIGPIPE", Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except PipesimError as exc:
        print(f"pipesim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out in a folder we may not write to
        where = f" {exc.filename}" if exc.filename else ""
        print(f"pipesim: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipesim: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    raise SystemExit(main())
