"""``pipesim examples DIR`` gives the bundled scenarios, measurement CSVs and notebooks as files to edit, laid
out as a clone's root; a scenario path that does not exist names the closest bundled scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesim.cli import main
from pipesim.scenario import BUNDLED_DIR, ScenarioError, bundled_scenarios, load_scenario

PACKAGE = BUNDLED_DIR.parent
SHIPPED = {f"scenarios/{p.name}" for p in BUNDLED_DIR.iterdir() if p.suffix in (".yaml", ".csv")} | {
    f"notebooks/{p.name}" for p in (PACKAGE / "notebooks").glob("*.ipynb")}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_examples_copies_every_bundled_file_and_says_what_next(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert {"scenarios/baseline.yaml", "scenarios/measurements_example.csv",
            "notebooks/05_calibration.ipynb"} <= SHIPPED
    dest = tmp_path / "ex"
    assert main(["examples", str(dest)]) == 0
    out = capsys.readouterr().out
    assert _files(dest) == SHIPPED
    for name in SHIPPED:
        assert (dest / name).read_bytes() == (PACKAGE / name).read_bytes()
        assert f"wrote {dest / name}\n" in out
    assert f"cd {dest}" in out and "pipesim validate scenarios/*.yaml" in out
    assert main(["validate", *map(str, sorted(dest.glob("scenarios/*.yaml")))]) == 0


def test_examples_refuses_to_overwrite_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "scenarios" / "baseline.yaml"
    edited.parent.mkdir()
    edited.write_text("name: mine\n")
    assert main(["examples", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(edited) in err and "--force" in err
    assert _files(tmp_path) == {"scenarios/baseline.yaml"} and edited.read_text() == "name: mine\n"
    assert main(["examples", str(tmp_path), "--force"]) == 0
    assert _files(tmp_path) == SHIPPED and edited.read_bytes() == (BUNDLED_DIR / "baseline.yaml").read_bytes()


def test_examples_into_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert main(["examples", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err == f"pipesim: error: {tmp_path / 'f'}: exists and is not a folder\n"


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(bundled_scenarios()), folder=st.sampled_from(["", "scenarios/", "my/own/"]),
       suffix=st.sampled_from([".yaml", ".yml", ".toml", ".json"]))
def test_a_missing_scenario_file_names_the_bundled_one(name: str, folder: str, suffix: str) -> None:
    missing = f"{folder}{name}{suffix}"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(f"/nonexistent-pipesim-folder/{missing}")
    [problem] = caught.value.problems
    assert "no such file" in problem and f"the bundled scenario '{name}' (its name, not a path)" in problem
    assert "pipesim examples DIR" in problem


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(bundled_scenarios()), data=st.data())
def test_a_misspelt_bundled_name_names_a_bundled_one(name: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(name) - 1))
    misspelt = name[:cut] + name[cut + 1:]  # one letter left out
    with pytest.raises(ScenarioError) as caught:
        load_scenario(misspelt)
    [problem] = caught.value.problems
    suggested = problem.split("did you mean the bundled scenario '")[1].split("'")[0]
    assert suggested in bundled_scenarios() and "not a path" not in problem


def test_a_missing_file_unlike_any_bundled_name_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "/nonexistent-pipesim-folder/zzz.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "bundled scenarios: barge_in, baseline" in err
