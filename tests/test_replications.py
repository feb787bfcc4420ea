"""Replications and sweeps: the numbers are those of ``pipesim run``, whoever computes them.

* Row k of a sweep is ``pipesim run --set ... --seed S --out D`` for that row: its fingerprint is that of
  ``turns.parquet``, and its figures are :func:`run_metrics` of that run.
* The same sweep gives the same table in this process, in 2 processes and on a 2-process Dask cluster.
* Replication r has the same seed at every grid point (common random numbers) and warm-up drops turns.
* The warning rule of the summary, over every count and quantile (hypothesis).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.cli import main
from pipesim.errors import ScenarioError
from pipesim.replications import (
    MIN_TAIL_TURNS,
    QUANTILES,
    confidence_intervals,
    replication_seeds,
    run_metrics,
    summarise,
    turns_digest,
)
from pipesim.results import Results, simulate

# Small, quick, and overloaded at one corner (one LLM worker at 3 sessions/s), so timeouts and retries
# are in the numbers compared.
SCENARIO = {
    "name": "small", "seed": 7,
    "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 30}, "turns": 3},
    "kafka": {"request_timeout_s": 1.0},
}
GRID = {"services.llm.capacity": [1, 4], "sessions.arrivals.rate_per_s": [1, 3]}
REPLICATIONS = 2


def same_figures(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "small.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def in_two_processes(scenario_file: Path) -> pipesim.SweepResult:
    return pipesim.sweep(scenario_file, GRID, replications=REPLICATIONS, workers=2, progress=False)


def test_sweep_rows_are_pipesim_run_byte_for_byte(in_two_processes, scenario_file: Path, tmp_path: Path,
                                                   capsys) -> None:
    runs = in_two_processes.runs
    assert len(runs) == 4 * REPLICATIONS
    assert runs["kafka_timeouts_per_turn"].max() > 0  # the overloaded corner retried
    for k in (1, len(runs) - 2):  # a second replication, and the other corner of the grid
        row = runs.iloc[k]
        out = tmp_path / f"row{k}"
        argv = ["run", str(scenario_file), "--seed", str(row["seed"]), "--out", str(out)]
        for path in GRID:
            argv += ["--set", f"{path}={row[path]}"]
        assert main(argv) == 0
        assert turns_digest(pd.read_parquet(out / "turns.parquet")) == row["turns_sha256"]
        figures = {c: row[c] for c in runs.columns if c not in (*GRID, "replication", "seed")}
        assert same_figures(run_metrics(Results.load(out)), {k: v.item() if hasattr(v, "item") else v
                                                             for k, v in figures.items()})
    capsys.readouterr()


def test_results_are_the_same_whatever_the_workers(in_two_processes, scenario_file: Path) -> None:
    here = pipesim.sweep(scenario_file, GRID, replications=REPLICATIONS, workers=1, progress=False)
    pd.testing.assert_frame_equal(here.runs, in_two_processes.runs, check_exact=True)


def test_sweep_on_a_dask_cluster_equals_local_processes(in_two_processes, scenario_file: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = pipesim.sweep(scenario_file, GRID, replications=REPLICATIONS, client=client, progress=False)
    pd.testing.assert_frame_equal(on_dask.runs, in_two_processes.runs, check_exact=True)


def test_common_random_numbers_across_grid_points(in_two_processes) -> None:
    runs = in_two_processes.runs
    seeds = replication_seeds(SCENARIO["seed"], REPLICATIONS)
    assert runs["seed"].tolist() == seeds * 4
    assert runs["replication"].tolist() == list(range(REPLICATIONS)) * 4
    assert runs[list(GRID)].drop_duplicates().values.tolist() == [[1, 1], [1, 3], [4, 1], [4, 3]]


def test_sweep_summary_per_point_matches_the_runs(in_two_processes) -> None:
    summary = in_two_processes.summary()
    p95 = summary.xs("e2e_latency_p95", level="metric")
    assert list(p95.index.names) == list(GRID) and len(p95) == 4
    point = in_two_processes.runs.iloc[:REPLICATIONS]
    ci = confidence_intervals(point, columns=["e2e_latency_p95"]).loc["e2e_latency_p95"]
    assert p95.iloc[0]["low"] == pytest.approx(ci["low"]) and p95.iloc[0]["high"] == pytest.approx(ci["high"])
    assert p95.iloc[0]["turns"] == point["e2e_latency_n"].sum()
    text = str(in_two_processes)
    assert "e2e_latency_p95_ms" in text and f"{p95.iloc[0]['mean'] * 1000:.1f}" in text


def test_a_misspelled_path_says_what_was_meant(scenario_file: Path) -> None:
    with pytest.raises(ScenarioError, match="did you mean 'services.llm.capacity'"):
        pipesim.sweep(scenario_file, {"services.llm.capacty": [1, 2]}, replications=1, workers=1)


def test_replicate_derives_seeds_and_drops_the_warm_up(scenario_file: Path) -> None:
    warmup = 10.0
    reps = pipesim.replicate(scenario_file, n=2, warmup_s=warmup, workers=1, progress=False)
    assert reps.runs["seed"].tolist() == replication_seeds(SCENARIO["seed"], 2)
    for seed, turns in zip(reps.runs["seed"], reps.runs["turns"], strict=True):
        all_turns = simulate(scenario_file, seed=int(seed), progress=False).turns
        assert 0 < turns == (~(all_turns["utterance_ended"] < warmup)).sum() < len(all_turns)
    summary = reps.summary()
    assert {"mean", "low", "high", "replications", "turns", "warning"} <= set(summary.columns)
    row = summary.loc["e2e_latency_mean"]
    assert row["low"] <= row["mean"] <= row["high"]
    assert row["turns"] == reps.runs["e2e_latency_n"].sum()
    assert "<table" in reps._repr_html_()


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 5000), min_size=2, max_size=6), stat=st.sampled_from([*QUANTILES, "mean"]))
def test_warning_rule(counts: list[int], stat: str) -> None:
    runs = pd.DataFrame({"seed": range(len(counts)), f"ttft_{stat}": [0.3] * len(counts), "ttft_n": counts})
    warning = summarise(runs).loc[f"ttft_{stat}", "warning"]
    fewest = min(counts)
    behind = fewest if stat == "mean" else math.floor(fewest * (1 - QUANTILES[stat]) + 1e-9)
    assert (warning != "") == (behind < MIN_TAIL_TURNS)
    assert summarise(runs).loc[f"ttft_{stat}", "turns"] == sum(counts)


def test_cli_replications_print_milliseconds_with_intervals(scenario_file: Path, capsys) -> None:
    # 3 LLM workers: neither run collapses (at 2, one of the two does, and each regime is printed apart)
    assert main(["run", str(scenario_file), "--replications", "2", "--warmup", "5", "--workers", "1",
                 "--set", "services.llm.capacity=3"]) == 0
    out = capsys.readouterr().out
    assert "2 replications" in out and "warm-up 5 s" in out and "e2e_latency" in out and " ± " in out
    reps = pipesim.replicate(pipesim.load_scenario(scenario_file).override({"services.llm.capacity": 3}), n=2,
                             warmup_s=5, workers=1, progress=False)
    assert not reps.regimes()
    assert f"{reps.summary().loc['e2e_latency_mean', 'mean'] * 1000:.1f} ± " in out


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "baseline", "--set", "services.llm.capacty=4"],
     "services.llm.capacty: no such field (did you mean 'services.llm.capacity'?)"),
    (["run", "baseline", "--set", "services.llm.capacity=0"], "override services.llm.capacity: must be >= 1, got 0"),
    (["run", "baseline", "--replications", "2", "--out", "x"], "--out and --plots write one run"),
    (["run", "baseline", "--warmup", "5"], "--warmup and --workers go with --replications N"),
    (["sweep", "baseline", "--set", "services.llm.capacity=[4"], "not a YAML/JSON value"),
    (["sweep", "baseline", "--set", "services.llm.capacity="], "give comma-separated values"),
])
def test_cli_mistakes_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipesim: error: ") and message in err and err.count("\n") == 1


def test_dask_flag_without_distributed_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert main(["sweep", "baseline", "--set", "services.llm.capacity=4", "--dask", "tcp://127.0.0.1:8786"]) == 2
    assert capsys.readouterr().err == ("pipesim: error: --dask needs the 'distributed' package: "
                                       "pip install 'pipesim[dask]'\n")
