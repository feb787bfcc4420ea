"""Command-line value types: each converts an option's text and refuses a value out of range, saying why
(argparse prints the reason as the one line of the error).

>>> port("8001")
8001
>>> port("70000")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be 0..65535, got 70000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def bounded(convert: Callable[[str], Any], ok: Callable[[Any], bool], must: str,
            noun: str = "a number") -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then refuse a value that is not ``ok``, saying why."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value

    return parse


port = bounded(int, lambda v: 0 <= v <= 65535, "0..65535", "a port number")
journal_size = bounded(int, lambda v: 0 <= v <= 10_000_000, "0..10000000", "a whole number")
