"""A scenario that validates also runs: every number is bounded, and a run too big for memory is refused.

The property test sets the schema's numeric fields to extreme values (0, tiny, huge, inf, nan, and the
bounds themselves): either validation refuses, naming the field, or a 30 s run finishes within seconds.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.cli import main
from pipesim.model.budget import check_budget, estimate_run
from pipesim.scenario import Scenario, ScenarioError, validate_scenario

SCRIPT = {"id": "s", "timeline": [{"at": 0.5, "speak": 1.0}, {"at": 5.0, "action": "pause"},
                                  {"at": 6.0, "action": "start"}, {"at": 7.0, "speak": 1.0}]}
ARRIVALS = [
    {"kind": "at_once", "count": 3},
    {"kind": "poisson", "rate_per_s": 1.0, "count": 3},
    {"kind": "poisson", "rate_per_s": 1.0, "duration_s": 3.0},
    {"kind": "ramp", "points": [[0.0, 0.5], [5.0, 1.0]]},
]


def base(arrivals: dict[str, Any]) -> dict[str, Any]:
    """A small scenario that has every kind of numeric field: outages, stalls, a script, the arrivals."""
    return Scenario.model_validate({
        "sessions": {"arrivals": arrivals, "scripted": [SCRIPT]},
        "services": {"stt": {"outages": [{"start_s": 5.0, "end_s": 8.0}]}},
        "kafka": {"outages": [{"start_s": 10.0, "end_s": 12.0}], "stalls": {"rate_per_hour": 60}},
        "audio": {"bitrate_bps": 32_000},
        "duration_s": 100.0,
    }).model_dump(mode="python")


def numeric_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every number of a dumped scenario (distribution parameters and list items included), and every
    unset optional field (None), as a path of keys and indices."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in numeric_paths(value, (*path, key))]
    if isinstance(node, list | tuple):
        return [p for i, value in enumerate(node) for p in numeric_paths(value, (*path, i))]
    if node is None or (isinstance(node, int | float) and not isinstance(node, bool)):
        return [path]
    return []


def set_path(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    if isinstance(node, tuple):  # ramp points are (time, rate) tuples
        raise TypeError
    node[path[-1]] = value


#: Zero, tiny, and the bounds of the schema (most values here are valid somewhere), then beyond.
IN_RANGE = [0, 5e-324, 1e-9, 1e-3, 1, 300, 3600, 10_000_000, 1_000_000]
BEYOND = [1e9, 10**18, 1e308, math.inf, -math.inf, math.nan, -1]
EXTREMES = st.one_of(st.sampled_from(IN_RANGE), st.sampled_from(IN_RANGE), st.sampled_from(BEYOND))
DISTRIBUTIONS = st.one_of(
    EXTREMES,
    st.builds(lambda lo, hi: {"kind": "lognormal", "p50": lo, "p95": hi},
              st.sampled_from([1e-9, 1e-3, 1]), st.sampled_from([1e3, 1e6, 1e9, math.inf])),
    st.builds(lambda m: {"kind": "exponential", "mean": m}, EXTREMES),
    st.builds(lambda m, cv: {"kind": "gamma", "mean": m, "cv": cv}, EXTREMES,
              st.sampled_from([1e-9, 1e-3, 100, 1e9])),
    st.builds(lambda hi: {"kind": "uniform", "low": 0, "high": hi}, EXTREMES),
    st.builds(lambda m, sd: {"kind": "normal", "mean": m, "sd": sd}, EXTREMES,
              EXTREMES),
)


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def names_a_changed_field(problem: str, changed: list[str]) -> bool:
    """The problem's field is a changed one, contains one (a section's own check) or is inside one (a
    distribution's parameter), or its message names one (e.g. chunk_ms in metadata_interval_s's)."""
    field = problem.split(" ", 2)[1].rstrip(":")
    return any(field == c or c.startswith(field + ".") or field.startswith(c + ".") or c in problem
               for c in changed)


@st.composite
def extreme_scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    data = base(draw(st.sampled_from(ARRIVALS)))
    paths = numeric_paths(data)
    chosen = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=2, unique=True))
    changed = []
    for path in chosen:
        distribution = path[-1] in ("p50", "p95", "value", "low", "high", "mean", "sd", "cv")
        value = draw(DISTRIBUTIONS) if distribution and draw(st.booleans()) else draw(EXTREMES)
        target = path[:-1] if distribution and isinstance(value, dict) else path
        try:
            set_path(data, target, value)
        except TypeError:  # a ramp point: replace the pair
            point = list(data["sessions"]["arrivals"]["points"][path[-2]])
            point[path[-1]] = value
            data["sessions"]["arrivals"]["points"][path[-2]] = point
        changed.append(dotted(target))
    return data, changed


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(extreme_scenarios())
def test_a_scenario_that_validates_runs_in_seconds(case: tuple[dict[str, Any], list[str]]) -> None:
    data, changed = case
    try:
        scn = validate_scenario(data)
    except ScenarioError as exc:
        assert all(names_a_changed_field(p, changed) for p in exc.problems), (changed, exc.problems)
        event("refused by validation")
        return
    started = time.perf_counter()
    try:
        # 50 MB: a run the budget lets through is small enough to finish in seconds.
        res = pipesim.simulate(scn, until=30, progress=False, memory_limit=50_000_000)
    except ScenarioError as exc:
        [problem] = exc.problems
        assert "would need about" in problem and "memory_limit" in problem
        event("refused by the memory budget")
        return
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"{changed}: a 30 s run took {elapsed:.1f} s"
    assert res.end_time <= 30
    event("ran")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 3 * 2**20  # KB: the test process stays < 3 GB


# What was seen ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "text", "why"), [
    ("sessions.scripted.0.timeline.0.speak",
     "sessions:\n  scripted:\n    - id: a\n      timeline:\n        - {at: 0, speak: 1.0e+308}\n",
     "a streaming STT session ends after 5 minutes"),
    ("sessions.arrivals.rate_per_s", "sessions:\n  arrivals: {kind: poisson, rate_per_s: 1.0e+9, count: 10}\n",
     "3.6 million an hour"),
    ("sessions.utterance_s", "sessions:\n  utterance_s: 1.0e+300\n", "at most a million"),  # as written
    ("audio.metadata_interval_s", "audio:\n  metadata_interval_s: 1.0e-9\n", "whole chunks"),
    ("audio.chunk_ms", "audio:\n  chunk_ms: 1.0e-9\n", "1 ms to 1 s"),
    ("sessions.turns", "sessions:\n  turns: .inf\n", "finite"),
    ("services.llm.tokens.p95", "services:\n  llm:\n    tokens: {kind: lognormal, p50: 25, p95: 1.0e+300}\n",
     "at most a million"),
    ("sessions.arrivals.points", "sessions:\n  arrivals: {kind: ramp, points: [[0, 1000], [100000, 1000]]}\n",
     "shorten the ramp"),
])
def test_validate_and_run_refuse_what_the_model_cannot_run(tmp_path, capsys, field, text, why):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f" {field}: " in err and why in err
    assert main(["run", str(path), "--until", "30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pipesim: error: ") and f" {field}: " in err


def test_a_run_too_big_for_memory_is_refused_up_front(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nsessions:\n  arrivals: {kind: at_once, count: 1000000}\n  turns: 1000\n")
    started = time.perf_counter()
    assert main(["run", str(path), "--until", "30"]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert err.startswith("pipesim: error: scenario 'big': a run would need about ") and err.count("\n") == 1
    assert "memory_limit" in err and "sessions.arrivals" in err


def test_the_budget_lets_100000_baseline_sessions_through():
    baseline = pipesim.load_scenario("scenarios/baseline.yaml")
    big = baseline.override({"sessions.arrivals.count": 100_000})
    est = check_budget(big, memory_limit=16 * 2**30)  # less than this machine's 24 GB
    assert est.sessions == 100_000 and est.turns_per_session == 5
    with pytest.raises(ScenarioError, match="would need about"):
        check_budget(big.override({"sessions.arrivals.count": 1_000_000}), memory_limit=16 * 2**30)


def test_the_estimate_is_close_to_what_baseline_does():
    res = pipesim.simulate("baseline", progress=False)
    est = estimate_run(res.scenario)
    assert 0.8 < est.events / res.trace.n_events < 1.5


def test_a_horizon_bounds_the_estimate_and_the_arrivals():
    endless = {"sessions": {"arrivals": {"kind": "ramp", "points": [[0, 1000], [10_000, 0]]}, "turns": 100_000}}
    with pytest.raises(ScenarioError):
        check_budget(validate_scenario(endless), memory_limit=10**9)
    est = check_budget(validate_scenario(endless), until=0.05, memory_limit=10**9)
    assert est.sessions < 100
    res = pipesim.simulate(endless, until=0.05, progress=False, memory_limit=10**9)
    assert 0 < len(res.sessions) < 100


# A misspelled parameter ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("typo", "meant"), [
    ("services.llm.capacty", "services.llm.capacity"),
    ("servces.llm.capacity", "services.llm.capacity"),
    ("kafka.request_timeout", "kafka.request_timeout_s"),
    ("sessions.arrivals.cont", "sessions.arrivals.count"),
])
def test_override_of_a_misspelled_field_says_what_was_meant(typo, meant):
    with pytest.raises(ScenarioError) as info:
        Scenario().override({typo: 2})
    assert info.value.problems == [f"{typo}: no such field (did you mean {meant!r}?)"]


def test_override_of_an_unknown_field_suggests_nothing_far_off():
    with pytest.raises(ScenarioError) as info:
        Scenario().override({"nothing.like.it": 2})
    assert info.value.problems == ["nothing.like.it: no such field"]


def test_sweep_of_a_misspelled_parameter_is_one_line(capsys):
    assert main(["sweep", "baseline", "--set", "services.llm.capacty=4,8"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("pipesim: error: services.llm.capacty: no such field "
                            "(did you mean 'services.llm.capacity'?)\n")
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("streamed", [True, False])
def test_a_refused_run_creates_no_folder(tmp_path, streamed):
    """``simulate(out=DIR)`` (and a run big enough to spill to a temporary folder) is refused by the memory
    budget before any folder is made: nothing is left behind."""
    big = {"name": "big", "sessions": {"arrivals": {"kind": "at_once", "count": 1_000_000}, "turns": 1000}}
    out = tmp_path / "deeper" / "run"
    before = set(Path(tempfile.gettempdir()).glob("pipesim-run-*"))
    with pytest.raises(ScenarioError, match="would need about"):
        pipesim.simulate(big, progress=False, memory_limit=10**9, out=out if streamed else None)
    assert not (tmp_path / "deeper").exists()
    assert set(Path(tempfile.gettempdir()).glob("pipesim-run-*")) == before
