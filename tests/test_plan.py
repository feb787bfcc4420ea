"""``pipesim plan``: the least-cost workers that meet the SLOs.

* The answer is met, and no configuration with one worker less (at or above the theory's floor) is.
* Every configuration runs the same seeds (common random numbers); none below the floor is tried.
* Exit 0 with an answer, 1 without, 2 on a usage error (one line).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipesim.cli import main
from pipesim.plan import plan, service_loads
from pipesim.replications import replication_seeds
from pipesim.theory import min_servers

SMALL = {"name": "small", "seed": 3,
         "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 60}, "turns": 3}}
SLOS = ["e2e_latency_p95 <= 2.5s", "timeout_failed_share <= 0.01"]


def test_the_answer_is_met_and_one_worker_less_is_not() -> None:
    result = plan(SMALL, SLOS, until=90, costs={"tts": 2.0})
    assert result.best is not None and result.best.met and result.exit_code == 0
    floor = {s: load.floor for s, load in result.loads.items()}
    by_config = {tuple(t.capacities.values()): t for t in result.trials}
    for svc, workers in result.best.capacities.items():
        fewer = {**result.best.capacities, svc: workers - 1}
        if fewer[svc] >= floor[svc]:
            assert not by_config[tuple(fewer.values())].met, fewer
    for t in result.trials:
        assert all(t.capacities[s] >= floor[s] for s in floor)  # nothing below the floor
        seeds = t.result.runs["seed"].tolist()
        assert seeds == replication_seeds(3, len(seeds))  # the same seeds everywhere
        assert t.cost == t.capacities["stt"] + t.capacities["llm"] + 2 * t.capacities["tts"]
    assert result.best.cost == min(t.cost for t in result.trials if t.met)


def test_the_floor_is_the_theorys() -> None:
    loads = service_loads(SMALL, until=90)
    for load in loads.values():
        assert load.floor == min_servers(load.rate_per_s, 1 / load.busy_s, prob_wait=1.0)
        assert load.floor > load.rate_per_s * load.busy_s >= load.floor - 1  # utilisation just below 1


def test_plan_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.json"
    scenario.write_text(json.dumps(SMALL))
    out = tmp_path / "plan.json"
    assert main(["plan", str(scenario), *(a for s in SLOS for a in ("--slo", s)), "--until", "90",
                 "--json", str(out)]) == 0
    assert "answer: --set services.stt.capacity=" in capsys.readouterr().out
    assert json.loads(out.read_text())["best"]["check"]["verdict"] == "met"
    # failed_share counts poor audio, which no worker buys back: two trials, no answer
    assert main(["plan", str(scenario), "--slo", "failed_share <= 0", "--until", "90", "--max-trials", "2"]) == 1
    assert "no configuration tried meets every SLO" in capsys.readouterr().out
    assert main(["plan", str(scenario), "--slo", SLOS[0], "--until", "90", "--services", "stt,gpu"]) == 2
    err = capsys.readouterr().err
    assert err == "pipesim: error: no such service: gpu (services: stt, llm, tts)\n"
    assert main(["plan", str(scenario), "--until", "90"]) == 2
    assert capsys.readouterr().err.startswith("pipesim: error: no SLO to plan for")
    with pytest.raises(SystemExit) as exited:
        main(["plan", str(scenario), "--slo", SLOS[0], "--cost", "llm=-1"])
    assert exited.value.code == 2 and "argument --cost: expected SERVICE=COST" in capsys.readouterr().err
