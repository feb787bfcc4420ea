"""``json.loads`` that refuses what would crash it, as a ``json.JSONDecodeError`` with a position.

Python's decoder raises ``RecursionError`` on structures nested about a thousand deep and a plain
``ValueError`` on an integer longer than ``sys.get_int_max_str_digits()`` (4300 by default, 640 at the
least). A linear pre-scan finds both first and reports them like any other syntax error, so callers
that already catch ``JSONDecodeError`` name the line.

>>> loads('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads("[" * 40 + "]" * 40)
Traceback (most recent call last):
...
json.decoder.JSONDecodeError: nested deeper than 32 levels: line 1 column 33 (char 32)
"""

from __future__ import annotations

import json
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


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` after :func:`check`; every failure is a ``JSONDecodeError``."""
    check(text, max_depth)
    return json.loads(text)
