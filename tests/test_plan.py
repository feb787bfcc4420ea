"""``pipesim plan``: the least-cost configuration that meets the SLOs, and ``--find``'s headroom.

* The recommendation is met, and one step cheaper in each varied dimension is not (or is below the theory's
  floor, or outside the range): the evidence is reported.
* On an M/M/c queue it is exactly Erlang C's ``min_servers``.
* Every configuration runs the same seeds (common random numbers); the answer does not depend on workers.
* Exit 0 with an answer, 1 without, 2 on a usage error (one line); ``--json`` starts with ``recommended``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import pipesim
from pipesim.cli import main
from pipesim.errors import PlanError
from pipesim.planning import Plan, headroom, parse_values, plan, service_loads
from pipesim.replications import replication_seeds
from pipesim.theory import MMc, min_servers, single_stage_scenario

SMALL = {"name": "small", "seed": 3,
         "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 60}, "turns": 3}}
SLOS = ["e2e_latency_p95 <= 2.5s", "timeout_failed_share <= 0.01"]
QUICK = {"until": 90.0, "warmup_s": 0.0}
LLM_TTS = {"services.llm.capacity": "1..16", "services.tts.capacity": "1..16"}


@pytest.fixture(scope="module")
def small_plan() -> Plan:
    return plan(SMALL, SLOS, vary=LLM_TTS, costs={"services.tts.capacity": 2.0}, **QUICK)


def test_the_recommendation_is_met_and_one_step_cheaper_is_not(small_plan: Plan) -> None:
    result = small_plan
    assert result.chosen is not None and result.chosen.verdict == "met" and result.exit_code == 0
    assert set(result.recommended) == set(LLM_TTS)
    for dim in result.dimensions:
        value = result.recommended[dim.path]
        evidence = result.evidence[dim.path]
        if value - 1 < dim.floor:
            assert isinstance(evidence, str) and "below the theory's floor" in evidence
        else:
            assert evidence.values == {**result.recommended, dim.path: value - 1}
            assert evidence.verdict != "met" and evidence.violates
    for e in result.evaluations:
        seeds = e.result.runs["seed"].tolist()
        assert seeds == replication_seeds(3, len(seeds))  # the same seeds everywhere
        assert e.cost == e.values["services.llm.capacity"] + 2 * e.values["services.tts.capacity"]
        assert all(e.values[d.path] >= d.floor for d in result.dimensions)  # nothing below the floor
    table = result.table
    assert len(table) == len(result.evaluations) and table["replications"].sum() == result.runs
    assert set(table["verdict"]) <= {"met", "violated", "undecided"}
    assert {"e2e_latency_p95 mean", "e2e_latency_p95 low", "e2e_latency_p95 high", SLOS[0]} <= set(table.columns)
    assert table.iloc[0]["role"] == "top of the ranges"
    assert result.cost == min(e.cost for e in result.evaluations if e.verdict == "met"
                              and all(e.values[p] <= v for p, v in result.recommended.items()))


def test_the_floor_and_first_guess_are_the_theorys() -> None:
    loads = service_loads(SMALL, until=90)
    for load in loads.values():
        assert load.floor == min_servers(load.rate_per_s, 1 / load.busy_s, prob_wait=1.0)
        assert load.floor > load.rate_per_s * load.busy_s >= load.floor - 1  # utilisation just below 1


# Against theory: an M/M/c queue -------------------------------------------------------------------------
# The target lies at the geometric middle between theory's figure at c - 1 workers and at c, so each is a
# factor of at least 1.6 from the bound: far outside the interval of the mean of a few 1,000-turn runs
# (a few percent), so neither verdict can be undecided. Were one near the boundary, check would add
# replications (up to 30) until its interval cleared the bound; the margin keeps that from being needed.
MMC_CASES = [(4.0, 1.0, "p95", 7), (9.0, 0.5, "p95", 8), (4.0, 1.0, "mean", 6), (6.0, 0.5, "mean", 5)]


@pytest.mark.parametrize(("rate", "mean", "stat", "expected"), MMC_CASES)
def test_an_mmc_plan_is_erlang_cs_minimum(rate: float, mean: float, stat: str, expected: int) -> None:
    def theory(c: int) -> float:
        queue = MMc(rate, 1 / mean, c)
        return queue.mean_wait if stat == "mean" else queue.wait_percentile(0.95)

    target = math.sqrt(theory(expected - 1) * theory(expected))
    assert theory(expected - 1) / target > 1.6 and target / theory(expected) > 1.6
    given = {"mean_wait": target} if stat == "mean" else {"wait_percentile": target, "quantile": 0.95}
    assert min_servers(rate, 1 / mean, **given) == expected
    slo = f"stt_queue_{stat} <= {target:.4f}s"
    result = plan(single_stage_scenario(rate, mean, 1, 1000, seed=11), [slo],
                  vary={"services.stt.capacity": range(1, 21)}, until=None, warmup_s=20)
    assert result.recommended == {"services.stt.capacity": expected}, result
    evidence = result.evidence["services.stt.capacity"]
    assert evidence.verdict == "violated", result  # simulated, one worker less: the answer is minimal
    assert result.runs <= 40  # theory's first guess spares the climb


def test_the_answer_does_not_depend_on_workers(small_plan: Plan) -> None:
    again = plan(SMALL, SLOS, vary=LLM_TTS, costs={"services.tts.capacity": 2.0}, workers=2, **QUICK)
    assert again.to_json() == small_plan.to_json()


def test_a_plan_on_dask_is_the_same_plan() -> None:
    distributed = pytest.importorskip("distributed")
    vary = {"services.llm.capacity": "1..16"}
    here = plan(SMALL, SLOS, vary=vary, **QUICK)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = plan(SMALL, SLOS, vary=vary, client=client, **QUICK)
    assert on_dask.to_json() == here.to_json() and here.recommended


def test_headroom_is_the_highest_met_load() -> None:
    scenario = single_stage_scenario(2.0, 0.5, 2, 600, seed=5)
    slo = "stt_queue_mean <= 0.1s"
    found = headroom(scenario, [slo], find="sessions.arrivals.rate_per_s", tolerance=0.1, until=None, warmup_s=20,
                     max_replications=6)  # near the boundary, undecided after 6 runs counts as not met
    best = found.recommended["sessions.arrivals.rate_per_s"]
    above = found.evidence["sessions.arrivals.rate_per_s"]
    assert found.exit_code == 0 and found.chosen.verdict == "met" and above.verdict != "met"
    assert 0 < above.values["sessions.arrivals.rate_per_s"] - best <= 0.1 * above.values[
        "sessions.arrivals.rate_per_s"]
    printed = str(found)
    assert f"highest met: sessions.arrivals.rate_per_s={best:g}" in printed and "lowest not met: " in printed
    assert "cost" not in printed
    # theory: 2 workers of mean 0.5 s wait 0.1 s on average at about 1.65 arrivals/s; the bisection answers
    # within its tolerance and the noise of 600 turns
    boundary = next(r / 100 for r in range(100, 400) if MMc(r / 100, 2.0, 2).mean_wait > 0.1)
    assert 0.75 * boundary <= best <= 1.1 * boundary


def test_values_and_costs_are_checked() -> None:
    assert parse_values("p", "2..4") == (2, 3, 4) and parse_values("p", "0.5,0.25") == (0.25, 0.5)
    for bad in ("4..2", "a..b", "", "1,,2", "nan"):
        with pytest.raises(PlanError, match=f"--vary p={bad}: expected"):
            parse_values("p", bad)
    with pytest.raises(PlanError, match="--cost services.stt.capacity: not a varied path"):
        plan(SMALL, SLOS, vary={"services.llm.capacity": "1..4"}, costs={"services.stt.capacity": 1}, **QUICK)


def test_pipesim_plan_is_the_function() -> None:
    import pipesim.planning as module

    assert pipesim.plan is module.plan and pipesim.headroom is module.headroom and pipesim.Plan is Plan


def test_plan_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_plan: Plan) -> None:
    scenario = tmp_path / "small.json"
    scenario.write_text(json.dumps(SMALL))
    out = tmp_path / "out" / "plan.json"
    common = [str(scenario), *(a for s in SLOS for a in ("--slo", s)), "--until", "90", "--warmup", "0",
              "--no-progress"]
    assert main(["plan", *common, "--vary", "services.llm.capacity=1..16", "--vary", "services.tts.capacity=1..16",
                 "--cost", "services.tts.capacity=2", "--json", str(out), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "recommended: services.llm.capacity=" in printed and "one step cheaper in services.tts.capacity" in printed
    data = json.loads(out.read_text())
    assert next(iter(data)) == "recommended" and data["recommended"] == small_plan.recommended
    assert data["cost"] == small_plan.cost and data["runs"] == small_plan.runs
    assert data == json.loads(small_plan.to_json())
    assert (tmp_path / "plots" / "plan.png").stat().st_size > 0
    # failed_share counts poor audio, which no worker buys back: the top of the range fails, exit 1
    assert main(["plan", *common, "--slo", "failed_share <= 0", "--services", "llm"]) == 1
    printed = capsys.readouterr().out
    assert "no configuration meets every SLO: the best tried, services.llm.capacity=64" in printed
    assert "violates failed_share <= 0" in printed


@pytest.mark.parametrize(("flags", "error"), [
    (["--services", "stt,gpu"], "--services stt,gpu: no such service 'gpu' (services: stt, llm, tts)"),
    (["--vary", "services.llm.capacity=8..2"], "--vary services.llm.capacity=8..2: expected LOW..HIGH"),
    (["--vary", "services.gpu.capacity=1..4"], "services.gpu.capacity: no such field"),
    (["--services", "llm", "--cost", "stt=2"], "--cost services.stt.capacity: not a varied path"),
    ([], "nothing to vary"),
    (["--find", "sessions.arrivals.rate_per_s", "--services", "llm"], "--find asks for the highest load"),
    (["--find", "sessions.turns.nope"], "--find sessions.turns.nope: no such field"),
    (["--find", "sessions.arrivals.rate_per_s", "--cost", "llm=2"], "--cost prices the varied paths of a plan"),
    (["--services", "llm", "--workers", "2", "--dask", "tcp://127.0.0.1:1"], "--workers is for local processes"),
])
def test_plan_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                        error: str) -> None:
    scenario = tmp_path / "small.json"
    scenario.write_text(json.dumps(SMALL))
    assert main(["plan", str(scenario), "--slo", SLOS[0], "--until", "90", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipesim: error: ") and error in err and err.count("\n") == 1, err


def test_plan_needs_an_slo_and_a_valid_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.json"
    scenario.write_text(json.dumps(SMALL))
    assert main(["plan", str(scenario), "--until", "90", "--services", "llm"]) == 2
    assert capsys.readouterr().err.startswith("pipesim: error: no SLO to plan for")
    with pytest.raises(SystemExit) as exited:
        main(["plan", str(scenario), "--slo", SLOS[0], "--cost", "llm=-1"])
    assert exited.value.code == 2 and "argument --cost: expected PATH=COST" in capsys.readouterr().err


def test_plan_without_a_bar_imports_no_tqdm_auto() -> None:
    """``progress=False`` asks for no bar, so tqdm.auto (which warns "IProgress not found" into a notebook
    without ipywidgets) is never imported: notebooks/06_capacity_plan.ipynb stays free of the warning."""
    code = ("import sys, pipesim.planning as p\n"
            "sessions = {'arrivals': {'kind': 'poisson', 'rate_per_s': 1.0, 'count': 20}, 'turns': 2}\n"
            "p.plan({'sessions': sessions}, ['e2e_latency_p95 <= 5s'], vary={'services.llm.capacity': '2..3'},"
            " until=30, warmup_s=0, progress=False)\n"
            "print('tqdm.auto' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-1000:]
