"""Scenario files: :func:`load_scenario` (a file's size, its encoding, its format by suffix), the scenarios
bundled with pipesim (``pipesim/scenarios/``), and :func:`as_scenario`, which takes any of them.

>>> as_scenario("baseline") == load_scenario("baseline")
True
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pipesim.errors import ScenarioError
from pipesim.scenario.parsing import format_for, parse_text
from pipesim.scenario.schema import Scenario, validate_scenario

#: A scenario file is read only up to this size (hand-written settings; big data goes in a CSV).
MAX_FILE_BYTES = 1_048_576


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file (YAML, TOML or JSON), or a bundled scenario by name.

    Raises :class:`ScenarioError` with one message per problem (file, line, field path), in line order.
    A file over :data:`MAX_FILE_BYTES`, nested deeper than :data:`MAX_DEPTH`, with an integer longer than
    :data:`MAX_INT_DIGITS` or YAML aliases expanding beyond :data:`MAX_ALIAS_NODES` is refused.

    >>> load_scenario("baseline").name
    'baseline'
    """
    path = scenario_path(path)
    fmt = format_for(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # a bound, whatever the file (even /dev/zero) holds
            size = max(len(raw), os.fstat(fh.fileno()).st_size)
    except FileNotFoundError:
        raise ScenarioError([f"{path}: no such file; {_bundled_hint(path)}"]) from None
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if size > MAX_FILE_BYTES:
        raise ScenarioError([f"{path}: the file is {size:,} bytes, the limit is {MAX_FILE_BYTES:,}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError([f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})"]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
    data = parse_text(text, fmt, str(path))
    return validate_scenario(data, source=str(path), text=text, fmt=fmt, base_dir=path.parent)


#: The bundled scenarios ship inside the package (``pipesim/scenarios/``; a clone links ``scenarios/`` to it),
#: so an installed wheel finds them as a checkout does.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "scenarios"


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with pipesim.

    >>> "baseline" in bundled_scenarios()
    True
    """
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """A path as given, or the file of a bundled scenario's name (``baseline`` -> ``.../scenarios/baseline.yaml``).

    A bare name (no suffix) that is not an existing file is looked up among the bundled scenarios.
    Raises :class:`ScenarioError` for a bare name that is neither a file nor a bundled scenario.

    >>> scenario_path("baseline").name
    'baseline.yaml'
    """
    path = bundled_or_given(name_or_path, ".yaml")
    if path is None:
        raise ScenarioError([f"{name_or_path}: no such file, and no bundled scenario of that name; "
                             f"{_bundled_hint(Path(name_or_path))}"])
    return path


def bundled_or_given(name_or_path: str | Path, suffix: str) -> Path | None:
    """The path as given when it exists or has a suffix (its reader says what is wrong with it); else, for a
    bare name, the bundled file ``name + suffix`` if there is one; else None.

    >>> bundled_or_given("baseline", ".yaml").name, bundled_or_given("no_such", ".yaml")
    ('baseline.yaml', None)
    """
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    bundled = BUNDLED_DIR / f"{path.name}{suffix}"
    return bundled if bundled.exists() else None


def _bundled_hint(missing: Path) -> str:
    """What to run instead of a missing scenario file: the closest bundled name, and how to get the files.

    >>> _bundled_hint(Path("scenarios/kafka_timeouts.yaml")).split("? ")[0]
    "did you mean the bundled scenario 'kafka_timeouts' (its name, not a path)"
    """
    names = bundled_scenarios()
    close = difflib.get_close_matches(missing.stem, names, n=1)
    if close:
        as_name = " (its name, not a path)" if missing.suffix or missing.parent != Path() else ""
        return (f"did you mean the bundled scenario '{close[0]}'{as_name}? "
                "`pipesim examples DIR` copies the bundled files into DIR")
    return f"bundled scenarios: {', '.join(names)}; `pipesim examples DIR` copies them into DIR"


def as_scenario(value: Scenario | str | Path | dict[str, Any]) -> Scenario:
    """Accept a Scenario, a dict, a file path or a bundled scenario name."""
    if isinstance(value, Scenario):
        return value
    if isinstance(value, dict):
        return validate_scenario(value, source="<dict>")
    return load_scenario(value)
