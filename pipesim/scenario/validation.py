"""A scenario's data validated: each of pydantic's errors as one line naming the file, the line and the field
path as the user wrote them, in line order, and every empirical CSV read (a bad one is a problem too)::

    scenarios/x.yaml:14 services.llm.capacity: must be >= 1, got 0

Nothing here knows the scenario's fields: :func:`validate_model` is handed the model's class
(:func:`pipesim.scenario.validate_scenario` hands it :class:`~pipesim.scenario.Scenario`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from pipesim.distributions import Distribution, Empirical, coerce_distribution
from pipesim.errors import ScenarioError
from pipesim.scenario.parsing import LineFinder, one_line

_Model = TypeVar("_Model", bound=BaseModel)

_DIST_TAGS = {"constant", "exponential", "lognormal", "gamma", "uniform", "normal", "empirical",
              "at_once", "poisson", "ramp"}


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Drop pydantic's union/validator markers so the path is what the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and (p in _DIST_TAGS or "[" in p)))


def _section_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class at a field path of ``root`` (None where the path goes through a union)."""
    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        for inner in getattr(annotation, "__args__", ()):  # list[X] -> X
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                annotation = inner
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _did_you_mean(given: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(given), allowed, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown_field(root: type[BaseModel], path: tuple[Any, ...]) -> str:
    section = _section_at(root, path[:-1])
    if section is None or not path:
        return "unknown field"
    allowed = [f.alias or name for name, f in section.model_fields.items()]
    return f"unknown field ({_did_you_mean(path[-1], allowed)}allowed: {', '.join(allowed)})"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message is one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


#: What a value of the wrong type should have been, by pydantic's error type.
_MUST_BE = {"float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
            "int_parsing": "a whole number", "int_from_float": "a whole number", "bool_type": "true or false",
            "bool_parsing": "true or false", "string_type": "text", "list_type": "a list", "tuple_type": "a list",
            "model_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
            "dict_type": "a mapping"}
_DISTRIBUTION_KINDS = ", ".join(cls.model_fields["kind"].default for cls in get_args(get_args(Distribution)[0]))


def _is_distribution(root: type[BaseModel], path: tuple[Any, ...]) -> bool:
    """Whether the field at ``path`` is a distribution (:data:`Dist`: a number or a mapping with a kind)."""
    section = _section_at(root, path[:-1]) if path else None
    field = section.model_fields.get(path[-1]) if section is not None else None
    return field is not None and any(getattr(m, "func", None) is coerce_distribution for m in field.metadata)


def _as_written(data: Any, path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a field path that the file has: a distribution written as a number (``turns: -3``) is
    validated as ``{kind: constant, value: -3}``, whose ``value`` its author never wrote."""
    node = data
    for i, part in enumerate(path):
        if (isinstance(node, dict) and part in node
                or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif not isinstance(node, dict | list):
            return path[:i]
        else:  # a field the file left out (a required one): named as the scenario has it
            return path
    return path


def _message(root: type[BaseModel], err: dict[str, Any], path: tuple[Any, ...]) -> str:
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind in ("model_attributes_type", "model_type") and _is_distribution(root, path):
        return (f"must be a number or a distribution, a mapping with a kind ({_DISTRIBUTION_KINDS}) and its "
                f"parameters, got {_short(given)}")
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}, got {_short(given)}"
    if kind == "extra_forbidden":
        return _unknown_field(root, _field_path(err["loc"]))
    if kind == "missing":
        return "required field is missing"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return f"must be {bounds[kind]} {limit}, got {_short(given)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("literal_error", "union_tag_invalid"):
        expected = str(ctx.get("expected") or ctx.get("expected_tags"))
        given = ctx.get("tag", given)  # a union tag: the kind given, not the whole mapping
        hint = _did_you_mean(given, re.findall(r"'([^']*)'", expected)).rstrip()
        return f"must be one of {expected}, got {_short(given)}" + (f" ({hint})" if hint else "")
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_short(given)}"


def _problem(source: str, line: int | None, path: tuple[Any, ...], message: str) -> tuple[int, str]:
    """(line, ``file:line field: message``): problems are sorted by line."""
    where = f"{source}:{line}" if line else source
    dotted = ".".join(one_line(str(p), 40) for p in path) or "(top level)"
    return line or 0, f"{where} {dotted}: {one_line(message, 500)}"



def validate_model(model: type[_Model], data: Any, source: str = "<data>", text: str | None = None,
                   fmt: str = "yaml", base_dir: Path | None = None) -> _Model:
    """``data`` (already parsed) validated as ``model``; every problem is one line naming ``source``, the line
    (when ``text``, in format ``fmt``, is given) and the field path, in line order, in one
    :class:`~pipesim.errors.ScenarioError`.

    Empirical distributions given as a CSV file are read here, relative to ``base_dir`` (default: the
    current folder), so that a missing or bad file is a validation problem.

    >>> from pipesim.scenario import Scenario
    >>> validate_model(Scenario, {"sessions": {"turns": -3}}, "x.yaml", "sessions:\\n  turns: -3\\n")
    Traceback (most recent call last):
    pipesim.errors.ScenarioError: x.yaml:2 sessions.turns: must be >= 0, got -3
    """
    if data is None:
        data = {}
    finder = LineFinder(text, fmt) if text is not None else None
    if not isinstance(data, dict):
        line = finder.line(()) if finder else None
        raise ScenarioError([f"{source}{f':{line}' if line else ''}: a scenario must be a mapping of sections, "
                             f"got {type(data).__name__}"])
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _as_written(data, _field_path(err["loc"]))
            problems.append(_problem(source, finder.line(path) if finder else None, path,
                                     _message(model, err, path)))
        raise ScenarioError([text for _, text in sorted(problems, key=lambda p: p[0])]) from None
    return _resolve_files(validated, base_dir or Path.cwd(), source, finder)


def _empirical_files(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Empirical]]:
    """Every empirical distribution still to be read from a CSV, anywhere in a scenario, with its path
    (as ``model_dump`` names it)."""
    if isinstance(value, Empirical):
        return [(path, value)] if value.samples is None else []
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in _empirical_files(item, (*path, i))]
    if isinstance(value, BaseModel):
        return [found for name, field in type(value).model_fields.items()
                for found in _empirical_files(getattr(value, name), (*path, field.alias or name))]
    return []


def _resolve_files(validated: _Model, base_dir: Path, source: str, finder: LineFinder | None = None) -> _Model:
    """Load every empirical CSV now (relative to ``base_dir``), so that a bad file is a load-time error."""
    found = _empirical_files(validated)
    if not found:
        return validated
    data = validated.model_dump(mode="python")
    problems = []
    for path, dist in found:
        try:
            resolved = dist.resolved(base_dir)
        except ValueError as exc:
            problems.append(_problem(source, finder.line(path) if finder else None, path, str(exc)))
            continue
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = resolved.model_dump()
    if problems:
        raise ScenarioError([text for _, text in sorted(problems, key=lambda p: p[0])])
    return type(validated).model_validate(data)
