"""The ``pipesim`` command line: run | serve | replay | validate | schema | sweep.

A user's mistake (a bad file, a bad flag) prints one clear ``pipesim: error: ...`` line and exits 2;
tracebacks are for pipesim's own bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A mistake in what the user gave us; printed as one line, exit status 2."""


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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"schema": _cmd_schema}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipesim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schema", help="print the JSON Schema of every wire message")
    p.add_argument("--format", choices=["jsonschema", "asyncapi"], default="jsonschema",
                   help="jsonschema (default): one schema per message type; asyncapi: an AsyncAPI 3 document")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipesim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"pipesim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
