"""Scenario files: every bundled one loads; a wrong file gets one clear message per problem."""

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

import pipesim
from pipesim.cli import main
from pipesim.scenario import Scenario, ScenarioError, bundled_scenarios, load_scenario, scenario_path

BUNDLED = sorted(Path("scenarios").glob("*.yaml"))


def test_all_six_scenarios_are_bundled():
    assert {p.stem for p in BUNDLED} >= {"baseline", "kafka_timeouts", "load_spike", "poor_audio", "barge_in",
                                         "frontend_demo"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_scenarios_load_and_are_commented(path):
    scn = load_scenario(path)
    assert scn.name == path.stem
    assert path.read_text().lstrip().startswith("#")


def problems(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return [p.replace(str(path), name) for p in info.value.problems]


def test_yaml_error_names_file_line_and_field(tmp_path):
    text = "name: x\nservices:\n  llm:\n    capacity: 0\nkafka:\n  max_retries: -1\n  typo_field: 3\n"
    assert problems(tmp_path, "x.yaml", text) == [
        "x.yaml:4 services.llm.capacity: must be >= 1, got 0",
        "x.yaml:6 kafka.max_retries: must be >= 0, got -1",
        "x.yaml:7 kafka.typo_field: unknown field (allowed: latency_s, request_timeout_s, max_retries, "
        "backoff_s, backoff_multiplier, stale_requests, stalls, outages)",
    ]


def test_unknown_field_suggests_the_closest_name(tmp_path):
    [msg] = problems(tmp_path, "t.yaml", "services:\n  llm:\n    capcity: 4\n")
    assert msg.startswith("t.yaml:3 services.llm.capcity: unknown field (did you mean 'capacity'? allowed: ")


def test_bad_distribution_is_named(tmp_path):
    text = "services:\n  stt:\n    latency_s: {kind: lognormal, p50: 0.3, p95: 0.2}\n"
    [msg] = problems(tmp_path, "d.yaml", text)
    assert msg.startswith("d.yaml:3 services.stt.latency_s:") and "p95 must be greater than p50" in msg
    [msg] = problems(tmp_path, "k.yaml", "services:\n  stt:\n    latency_s: {kind: weibull}\n")
    assert msg.startswith("k.yaml:3 services.stt.latency_s: must be one of")


def test_json_and_toml_errors_have_lines(tmp_path):
    [msg] = problems(tmp_path, "j.json", '{\n  "sessions": {\n    "barge_in_probability": 2\n  }\n}\n')
    assert msg == "j.json:3 sessions.barge_in_probability: must be <= 1, got 2"
    [msg] = problems(tmp_path, "t.toml", "[services.tts]\ncapacity = 0\n")
    assert msg == "t.toml:2 services.tts.capacity: must be >= 1, got 0"


def test_syntax_errors_and_missing_files(tmp_path):
    [msg] = problems(tmp_path, "s.yaml", "sessions:\n  arrivals: [unclosed\n")
    assert msg.startswith("s.yaml:") and "invalid YAML" in msg
    [msg] = problems(tmp_path, "e.yaml", "services:\n  stt:\n    latency_s: {kind: empirical, csv: nope.csv}\n")
    assert "services.stt.latency_s" in msg and "nope.csv" in msg
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match="unknown scenario format"):
        load_scenario(tmp_path / "x.ini")


def test_scripted_timeline_rules(tmp_path):
    text = ("sessions:\n  scripted:\n    - id: a\n      timeline:\n"
            "        - {at: 2, speak: 1}\n        - {at: 1, action: stop}\n")
    [msg] = problems(tmp_path, "sc.yaml", text)
    assert "sessions.scripted.0" in msg and "time order" in msg


def test_validate_command(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("name: good\n")
    bad.write_text("services:\n  llm: {capacity: 0}\n")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2 services.llm.capacity: must be >= 1, got 0" in err
    assert "Traceback" not in err


def test_run_command_reports_a_bad_file_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: {request_timeout_s: 0}\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipesim: error: ") and "kafka.request_timeout_s: must be > 0" in err


def test_run_command_writes_parquet_and_trace(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("name: small\nsessions: {arrivals: {kind: at_once, count: 10}}\n")
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--csv", "--jsonl"]) == 0
    out = capsys.readouterr().out
    assert "e2e_latency" in out and "p95_ms" in out
    for name in ("events.parquet", "turns.parquet", "sessions.parquet", "services.parquet", "messages.parquet",
                 "kafka_windows.parquet", "trace.jsonl", "turns.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    header = json.loads((tmp_path / "out" / "trace.jsonl").read_text().splitlines()[0])
    assert header == {"record": "header", "scenario": "small", "seed": 0}


def test_override_validates():
    with pytest.raises(ScenarioError, match="services.llm.nope: no such field"):
        Scenario().override({"services.llm.nope": 1})
    with pytest.raises(ScenarioError, match="services.llm.capacity: must be >= 1"):
        Scenario().override({"services.llm.capacity": 0})


def test_unknown_bundled_name_lists_the_bundled_ones(capsys):
    assert main(["run", "no_such_scenario"]) == 2
    err = capsys.readouterr().err
    assert "no bundled scenario of that name" in err and "baseline" in err and "Traceback" not in err


NAMES = [p.stem for p in BUNDLED]


@pytest.mark.parametrize("name", NAMES)
def test_bundled_names_load_from_anywhere(name, tmp_path, monkeypatch, capsys):
    """A bundled name works from any folder, in the library and in every command that takes a scenario."""
    monkeypatch.chdir(tmp_path)  # no scenarios/ folder here: the name must resolve inside the package
    assert load_scenario(name).name == name
    assert pipesim.scenario.as_scenario(name).name == name
    assert main(["validate", name]) == 0
    assert capsys.readouterr().out == f"{name}: ok ({name})\n"


def test_bundled_scenarios_live_inside_the_package():
    """An installed wheel has only the package: the bundled files must be in it, and declared as package data."""
    package = Path(pipesim.__file__).resolve().parent
    assert bundled_scenarios() == NAMES
    assert scenario_path("baseline").resolve() == package / "scenarios" / "baseline.yaml"
    with open(package.parent / "pyproject.toml", "rb") as fh:
        patterns = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["pipesim"]
    files = [f.relative_to(package).as_posix() for f in (package / "scenarios").iterdir() if f.is_file()]
    assert files and all(any(fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)


def test_load_scenario_still_reads_paths_and_names_a_missing_one(tmp_path):
    (tmp_path / "baseline.yaml").write_text("name: mine\n")  # a file named like a bundled scenario
    assert load_scenario(tmp_path / "baseline.yaml").name == "mine"
    assert load_scenario(str(tmp_path / "baseline.yaml")).name == "mine"
    with pytest.raises(ScenarioError, match="no bundled scenario of that name"):
        load_scenario("no_such_scenario")


def test_unwritable_output_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "s.yaml").write_text("sessions: {arrivals: {kind: at_once, count: 2}}\n")
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipesim: error:") and err.count("\n") == 1


def test_two_runs_write_the_same_bytes(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("sessions: {arrivals: {kind: poisson, rate_per_s: 2, count: 30}}\n"
                                     "kafka: {stalls: {rate_per_hour: 600}}\n")
    for out in ("a", "b"):
        assert main(["run", str(tmp_path / "s.yaml"), "--seed", "5", "--csv", "--out", str(tmp_path / out)]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(written) == 14  # 7 tables as Parquet, 6 as CSV (not events), scenario.json
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
