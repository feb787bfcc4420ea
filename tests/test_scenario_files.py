"""Bad scenario files never crash the loader: one ``file:line field: message`` per problem, in line order.

Every class of input that once crashed or hung the loader is generated here (hypothesis), not sampled.
"""

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipesim.cli import main
from pipesim.scenario import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_INT_DIGITS,
    Scenario,
    ScenarioError,
    load_scenario,
)

FILE_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def problems(tmp_path: Path, name: str, text: str | bytes) -> list[str]:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return [p.replace(str(path), name) for p in info.value.problems]


def nested(fmt: str, depth: int) -> str:
    """A scenario whose ``description`` is a list nested ``depth`` deep."""
    inner = "[" * depth + "]" * depth
    return {"yaml": f"description: {inner}\n", "json": f'{{"description": {inner}}}',
            "toml": f"description = {inner}\n"}[fmt]


# 1. Huge integers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
@given(digits=st.integers(MAX_INT_DIGITS + 1, 20_000))
@FILE_SETTINGS
def test_a_huge_integer_is_one_problem_with_its_line(tmp_path, fmt, digits):
    number = "7" * digits
    text = {"yaml": f"name: x\nseed: {number}\n", "toml": f'name = "x"\nseed = {number}\n',
            "json": f'{{"name": "x",\n "seed": {number}}}'}[fmt]
    [msg] = problems(tmp_path, f"h.{fmt}", text)
    assert msg.startswith(f"h.{fmt}:2") and len(msg) < 300, msg


# 2. and 3. Depth, size and aliases --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
@given(depth=st.integers(MAX_DEPTH + 1, 3000))
@example(depth=MAX_DEPTH + 1)  # one past the limit
@example(depth=3000)  # past Python's recursion limit, where a recursive parser crashes
# Depth is all that varies, and every depth past the limit meets the same check (a count of the collections
# open, refused once it passes MAX_DEPTH): the two ends above and 18 more are enough (60 depths made the YAML
# case take seconds: PyYAML's scanner reads the whole file first).
@settings(FILE_SETTINGS, max_examples=20)
def test_deep_nesting_is_refused_with_its_line(tmp_path, fmt, depth):
    [msg] = problems(tmp_path, f"d.{fmt}", nested(fmt, depth))
    assert msg.startswith(f"d.{fmt}:1") and "nested deeper than" in msg, msg


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
def test_nesting_up_to_the_limit_is_read(tmp_path, fmt):
    # The description must be a string, so this is a validation problem, not a limit.
    [msg] = problems(tmp_path, f"d.{fmt}", nested(fmt, MAX_DEPTH - 1))
    assert msg.startswith(f"d.{fmt}:1 description: "), msg


def billion_laughs(levels: int, width: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(["description: x", *lines]) + "\n"


@pytest.mark.timeout(20)
def test_billion_laughs_is_refused_quickly(tmp_path):
    start = time.perf_counter()
    [msg] = problems(tmp_path, "bomb.yaml", billion_laughs(9, 9))
    assert time.perf_counter() - start < 5
    assert "aliases expand" in msg and f"{MAX_ALIAS_NODES:,}" in msg, msg
    assert msg.startswith("bomb.yaml:"), msg


def test_a_self_referencing_alias_is_refused(tmp_path):
    [msg] = problems(tmp_path, "cycle.yaml", "description: x\nservices: &s\n  llm: *s\n")
    assert msg.startswith("cycle.yaml:3") and "refers to the node that holds it" in msg, msg


def test_a_few_aliases_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("services:\n  stt: {latency_s: &lat {kind: lognormal, p50: 0.2, p95: 0.4}}\n"
                    "  tts: {ttfb_s: *lat}\n")
    scn = load_scenario(path)
    assert scn.services.tts.ttfb_s == scn.services.stt.latency_s


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    text = "description: '" + "x" * MAX_FILE_BYTES + "'\n"
    [msg] = problems(tmp_path, "big.yaml", text)
    assert msg == f"big.yaml: the file is {len(text):,} bytes, the limit is {MAX_FILE_BYTES:,}"


def test_python_tags_are_refused(tmp_path):
    [msg] = problems(tmp_path, "tag.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n")
    assert msg.startswith("tag.yaml:1: invalid YAML:") and "python/object" in msg, msg


# 7. Syntax errors, line order, suggestions ------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text", "line"), [
    ("s.yaml", "name: x\nsessions:\n  arrivals: [unclosed\n", 4),
    ("s.json", '{"name": "x",\n "seed": }', 2),
    ("s.toml", 'name = "x"\nseed = = 3\n', 2),
    ("s.toml", 'name = "x"\n[kafka]\nmax_retries = 1\n[kafka]\n', 4),
    ("s.toml", 'name = "x"\nkafka = {a = 1, a = 2}\n', 2),
    ("nul.yaml", "name: x\ndescription: \x00\n", 2),
    ("bin.json", b'{"name": "x",\n"seed": 1\xff}', 2),
])
def test_a_syntax_error_names_its_line(tmp_path, name, text, line):
    [msg] = problems(tmp_path, name, text)
    assert msg.startswith(f"{name}:{line}: "), msg


def test_problems_are_printed_in_line_order(tmp_path):
    text = ("[services.tts]\ncapacity = 0\n[sessions]\nturns = -1\n[kafka]\nmax_retries = -1\n"
            "[services.stt]\ncapacity = 0\n")
    found = problems(tmp_path, "o.toml", text)
    assert [m.split()[0] for m in found] == ["o.toml:2", "o.toml:4", "o.toml:6", "o.toml:8"], found


@pytest.mark.parametrize(("text", "where", "hint"), [
    ("sessions:\n  arrivals: {kind: poison, rate_per_s: 1, count: 3}\n", "x.yaml:2 sessions.arrivals:",
     "did you mean 'poisson'?"),
    ("services:\n  llm:\n    ttft_s: {kind: lognormla, p50: 1, p95: 2}\n", "x.yaml:3 services.llm.ttft_s:",
     "did you mean 'lognormal'?"),
    ("sessions:\n  scripted:\n  - id: a\n    timeline:\n    - {at: 1, action: stpo}\n",
     "x.yaml:5 sessions.scripted.0.timeline.0.action:", "did you mean 'stop'?"),
])
def test_a_misspelled_kind_gets_a_suggestion(tmp_path, text, where, hint):
    [msg] = problems(tmp_path, "x.yaml", text)
    assert msg.startswith(where) and hint in msg, msg


# 6. TOML lines come from the parser, not from a text search --------------------------------------------------
def test_toml_problems_point_at_their_own_table(tmp_path):
    text = ("[services.stt]\ncapacity = 3\n\n[services.llm]\ncapacity = 0\nttft_s = {kind = \"uniform\", "
            "low = 2, high = 1}\n\n[kafka]\nmax_retries = 1\nlatency_s.kind = \"constant\"\n")
    found = problems(tmp_path, "t.toml", text)
    assert found[0] == "t.toml:5 services.llm.capacity: must be >= 1, got 0"
    assert found[1].startswith("t.toml:6 services.llm.ttft_s:")
    assert found[2].startswith("t.toml:10 kafka.latency_s.value: required field is missing"), found


def test_toml_arrays_of_tables_have_lines(tmp_path):
    text = ('[[sessions.scripted]]\nid = "a"\ntimeline = [{at = 1, speak = 2}]\n\n'
            '[[sessions.scripted]]\nid = "b"\ntimeline = [\n  {at = 1, speak = 2},\n  {at = 2, spek = 1},\n]\n\n'
            '[[sessions.scripted]]\nid = "c"\n')
    found = problems(tmp_path, "a.toml", text)
    assert found == [
        "a.toml:9 sessions.scripted.1.timeline.1.spek: unknown field (did you mean 'speak'? allowed: at, speak, "
        "action)",
        "a.toml:12 sessions.scripted.2.timeline: required field is missing",
    ]


# 4. and 5. Empirical CSVs anywhere, relative to the scenario's folder -----------------------------------------
def test_an_empirical_csv_outside_services_is_read_from_the_scenario_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "utt.csv").write_text("seconds\n1.5\n2.5\n")
    (tmp_path / "sub" / "s.yaml").write_text(
        "sessions:\n  arrivals: {kind: at_once, count: 2}\n"
        "  utterance_s: {kind: empirical, csv: utt.csv, column: seconds}\n"
        "kafka:\n  stalls: {duration_s: {kind: empirical, csv: utt.csv}}\n")
    monkeypatch.chdir(tmp_path)
    scn = load_scenario(tmp_path / "sub" / "s.yaml")
    assert scn.sessions.utterance_s.samples == (1.5, 2.5)
    assert scn.kafka.stalls.duration_s.samples == (1.5, 2.5)
    assert main(["run", str(tmp_path / "sub" / "s.yaml")]) == 0


CSV_CASES = {
    "missing_column": ("a,b\n1,2\n", "has no column 'latency_s' (columns: a, b)"),
    "non_numeric": ("latency_s\n0.2\nfast\n", "line 3: not a number: 'fast'"),
    "not_finite": ("latency_s\n0.2\nnan\n", "line 3: not a finite number: 'nan'"),
    "negative": ("latency_s\n0.2\n-1\n", "line 3: must be >= 0, got -1.0"),
    "empty": ("", "is empty"),
    "header_only": ("latency_s\n", "column 'latency_s' has no values"),
    "huge_field": ("latency_s\n\"" + "1" * 200_000 + "\"\n", "line 2: field larger than field limit"),
    "nul": ("latency_s\n0.\x002\n", "line 2: not a number"),
    "not_utf8": (b"latency_s\n\xff\xfe\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_a_bad_csv_is_one_clear_line(tmp_path, case):
    content, expected = CSV_CASES[case]
    (tmp_path / "lat.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    text = "services:\n  stt:\n    latency_s: {kind: empirical, csv: lat.csv, column: latency_s}\n"
    [msg] = problems(tmp_path, "c.yaml", text)
    assert msg.startswith("c.yaml:3 services.stt.latency_s: ") and expected in msg, msg
    assert "\n" not in msg and len(msg) < 300, msg


def test_every_missing_csv_is_reported_in_line_order(tmp_path):
    text = ("sessions:\n  utterance_s: {kind: empirical, csv: a.csv}\n"
            "services:\n  tts:\n    ttfb_s: {kind: empirical, csv: b.csv}\n")
    found = problems(tmp_path, "m.yaml", text)
    assert [m.split(" ", 2)[:2] for m in found] == [["m.yaml:2", "sessions.utterance_s:"],
                                                     ["m.yaml:5", "services.tts.ttfb_s:"]], found


# Anything at all: a Scenario or a ScenarioError, quickly ---------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30)
section_names = st.sampled_from(["name", "seed", "services", "kafka", "sessions", "audio", "quality", "llm",
                                 "capacity", "kind", "arrivals", "scripted", "samples", "csv", "duration_s"])
scenario_like = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["poisson", "lognormal", "empirical", "at_once", "x.csv", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(section_names, children, max_size=4),
    max_leaves=25)


def load_anything(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        result = load_scenario(path)
    except ScenarioError as exc:
        # Every problem names the file and the line: a broken file as much as a wrong field.
        assert exc.problems and all(re.match(rf"{re.escape(str(path))}:\d+[: ]", p) and "\n" not in p
                                    for p in exc.problems), exc.problems
    else:
        assert isinstance(result, Scenario)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("suffix", ["yaml", "json", "toml"])
@given(data=st.binary(max_size=300))
@FILE_SETTINGS
def test_arbitrary_bytes_load_or_fail_cleanly(tmp_path, suffix, data):
    load_anything(tmp_path, f"b.{suffix}", data)


@given(value=scenario_like, style=st.sampled_from([None, True, False]))
@FILE_SETTINGS
def test_arbitrary_yaml_documents_load_or_fail_cleanly(tmp_path, value, style):
    import yaml

    load_anything(tmp_path, "y.yaml", yaml.safe_dump(value, default_flow_style=style).encode())


@given(value=json_values | scenario_like)
@FILE_SETTINGS
def test_arbitrary_json_documents_load_or_fail_cleanly(tmp_path, value):
    load_anything(tmp_path, "j.json", json.dumps(value, indent=1).encode())


@given(value=st.dictionaries(section_names, scenario_like, max_size=5))
@FILE_SETTINGS
def test_arbitrary_toml_documents_load_or_fail_cleanly(tmp_path, value):
    import tomlkit

    try:
        text = tomlkit.dumps(value)
    except Exception:  # a value TOML cannot hold (None): nothing to test
        return
    load_anything(tmp_path, "t.toml", text.encode())


@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#\n ,.0129?%@`\t")), max_size=120))
@FILE_SETTINGS
def test_yaml_ish_text_loads_or_fails_cleanly(tmp_path, text):
    load_anything(tmp_path, "t.yaml", text.encode())
