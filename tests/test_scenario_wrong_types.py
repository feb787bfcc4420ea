"""A value of the wrong type in a scenario file is one line naming the field as the file has it.

For every number and every distribution of the schema (found by walking it, so a new field is covered),
in YAML and TOML: text where a number belongs says what the field takes; a distribution written as a
bare number that is out of bounds is named as written (``sessions.turns``, not the ``value`` of the
constant it stands for).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import tomlkit
import yaml
from pydantic import BaseModel

from pipesim.distributions import coerce_distribution
from pipesim.errors import ScenarioError
from pipesim.scenario import Scenario, load_scenario


def _leaf_fields(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(path, "int" | "float" | "distribution") of every number and distribution of the scenario's sections."""
    found = []
    for name, field in model.model_fields.items():
        key = (*path, field.alias or name)
        annotation = field.annotation
        if any(getattr(m, "func", None) is coerce_distribution for m in field.metadata):
            found.append((key, "distribution"))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _leaf_fields(annotation, key)
        else:
            kinds = set(get_args(annotation)) - {type(None)} if get_origin(annotation) in (Union, types.UnionType) \
                else {annotation}
            if kinds in ({int}, {float}):
                found.append((key, kinds.pop().__name__))
    return found


FIELDS = _leaf_fields(Scenario)
MUST_BE = {"int": "must be a whole number", "float": "must be a number",
           "distribution": "must be a number or a distribution, a mapping with a kind (constant, "}


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def _problems(tmp_path: Path, fmt: str, path: tuple[str, ...], value: Any) -> tuple[list[str], str, int]:
    """The problems of a file setting ``path`` to ``value``, the file, and the line ``path`` is on."""
    data = _nested(path, value)
    text = yaml.safe_dump(data) if fmt == "yaml" else tomlkit.dumps(data)
    file = tmp_path / f"wrong.{fmt}"
    file.write_text(text, encoding="utf-8")
    leaf = f"{path[-1]}:" if fmt == "yaml" else f"{path[-1]} ="
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if text_line.lstrip().startswith(leaf))
    with pytest.raises(ScenarioError) as info:
        load_scenario(file)
    return info.value.problems, str(file), line


def test_the_walk_finds_the_fields_a_scenario_has() -> None:
    kinds = dict(FIELDS)
    assert kinds[("services", "llm", "capacity")] == "int" and kinds[("kafka", "request_timeout_s")] == "float"
    assert kinds[("sessions", "turns")] == kinds[("kafka", "stalls", "duration_s")] == "distribution"
    assert len(FIELDS) > 40


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
@pytest.mark.parametrize(("path", "kind"), FIELDS, ids=[".".join(p) for p, _ in FIELDS])
def test_text_where_a_number_belongs_names_the_field(tmp_path: Path, fmt: str, path: tuple[str, ...],
                                                     kind: str) -> None:
    problems, file, line = _problems(tmp_path, fmt, path, "five")
    assert len(problems) == 1
    assert problems[0].startswith(f"{file}:{line} {'.'.join(path)}: {MUST_BE[kind]}")
    assert problems[0].endswith(", got 'five'")


DISTRIBUTIONS = [path for path, kind in FIELDS if kind == "distribution"]


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
@pytest.mark.parametrize("path", DISTRIBUTIONS, ids=[".".join(p) for p in DISTRIBUTIONS])
def test_a_distribution_written_as_a_number_is_named_as_written(tmp_path: Path, fmt: str,
                                                                path: tuple[str, ...]) -> None:
    problems, file, line = _problems(tmp_path, fmt, path, -3)
    assert problems == [f"{file}:{line} {'.'.join(path)}: must be >= 0, got -3"]
