"""The one reader of JSON from a socket or a file: ``json.loads`` that refuses what would crash it, as a
``json.JSONDecodeError`` with a position; and :func:`unsendable`, what in a value JSON cannot carry back.

Python's decoder raises ``RecursionError`` on structures nested about a thousand deep and a plain
``ValueError`` on an integer longer than ``sys.get_int_max_str_digits()`` (4300 by default, 640 at the
least). A linear pre-scan finds both first and reports them like any other syntax error, so callers
that already catch ``JSONDecodeError`` name the line. ``NaN`` and ``Infinity`` are read (pipesim's own
trace files write them); a field that must be finite refuses them where it is checked (a pydantic model,
:func:`unsendable` before an echo). Size is the caller's to bound before reading (the live server refuses
a frame over 64 KiB unread).

>>> loads('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads("[" * 40 + "]" * 40)
Traceback (most recent call last):
...
json.decoder.JSONDecodeError: nested deeper than 32 levels: line 1 column 33 (char 32)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Containers inside containers: a scenario needs 6, a wire message 3.
MAX_DEPTH = 32
#: Digits of an integer: the smallest limit Python lets an interpreter set on ``int(str)``, so the check
#: holds whatever the interpreter's setting (no field of ours is anywhere near 640 digits).
MAX_INT_DIGITS = 640

# A string (an unterminated one runs to the end of its line: JSON strings hold no raw newline), an
# opening or closing bracket, or an integer literal longer than the limit (not a fraction or exponent).
_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*(?:"|$)|[\[{]|[\]}]|(?<![\d.eE+-])-?\d{' + str(MAX_INT_DIGITS + 1)
                     + r',}(?![\d.eE])', re.MULTILINE)

_LONG_DIGITS = re.compile(r"\d{" + str(MAX_INT_DIGITS + 1) + "}")


def check(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``JSONDecodeError`` where ``text`` nests deeper than ``max_depth`` or has a huge integer."""
    # Fast paths (most lines of a trace): too few brackets to nest that deep, no run of digits that long.
    if text.count("[") + text.count("{") <= max_depth and not _LONG_DIGITS.search(text):
        return
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, match.start())
        elif token in ("]", "}"):
            depth -= 1
        elif token[0] != '"':
            raise json.JSONDecodeError(f"an integer of {len(token.lstrip('-'))} digits (the limit is "
                                       f"{MAX_INT_DIGITS})", text, match.start())


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` after :func:`check`; every failure is a ``JSONDecodeError``, or for bytes that
    are not UTF-8 a ``UnicodeDecodeError`` (both are ``ValueError``)."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    check(text, max_depth)
    return json.loads(text)


def unsendable(value: Any, where: str = "value", max_depth: int = MAX_DEPTH) -> str | None:
    """What in ``value`` (as :func:`loads` returns it) JSON cannot carry, or :func:`loads` would refuse,
    named by its path from ``where``; None if it can be sent as it is.

    >>> unsendable({"a": [1, float("nan")]}, "data")
    'data.a[1] is NaN, which JSON cannot carry'
    >>> unsendable([[[]]], "d", max_depth=2)
    'd is nested 3 levels deep, deeper than 2'
    >>> unsendable({"a": 1.5}) is None
    True
    """
    def depth(item: Any) -> int:
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)

    levels = depth(value)  # at most loads's limit deep: the recursion is bounded
    if levels > max_depth:
        return f"{where} is nested {levels} levels deep, deeper than {max_depth}"
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            literal = "NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"
            return f"{path if len(path) <= 80 else path[:77] + '...'} is {literal}, which JSON cannot carry"
        if isinstance(item, dict):
            stack.extend((child, f"{path}.{key}") for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None
