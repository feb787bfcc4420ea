"""The simulation against queueing theory.

1. Configured as one M/M/c queue (``pipesim.theory.single_stage_scenario``: Poisson turns, exponential
   STT, everything else instantaneous), the model's STT stage must behave as M/M/c:

   * exactly: every turn's ``stt_queue`` equals the wait a first-come-first-served c-server queue gives
     the same arrival and service times (the Kiefer-Wolfowitz recursion, replayed here);
   * statistically: mean wait, probability of waiting and utilisation, each a mean over independent
     replications after warm-up deletion, must agree with the Erlang C closed forms.

   Statistics. Each replication is one run (seeds from ``SeedSequence(BASE_SEED + i)`` for the i-th
   queue); turns that began before the warm-up are dropped. For each figure a two-sided Student-t
   confidence interval is built from the per-run values, at a Bonferroni-corrected level:
   ``COMPARISONS`` = 4 queues x 3 figures = 12 comparisons, each at 1 - 0.05/12, so the chance that any
   one fails on a correct model is at most 5% (the seeds are fixed, so the outcome is the same on every
   run). The tolerance is that interval and nothing else: the theory must lie inside it. So that a pass
   means something, each interval must also be narrower than ``MAX_HALF_WIDTH`` (relative to the
   theory): a bias larger than that would fail. Mean waits are noisy (a queue's wait is strongly
   autocorrelated), which is why their bound is wide; the exact replay above is what pins the queue
   discipline down. The estimators' own bias (start-up not fully washed out by the warm-up, short runs)
   is a few percent (-5% at worst, for M/M/12 mean wait, measured by replaying this design 1,500 times
   in numpy), far inside the intervals.

2. Little's law on full-model traces (``baseline``; ``kafka_timeouts`` with its outage, timeouts and
   retries; and the same with a stall every ~5 s, so that some STT responses time out too): the
   time-average number waiting for each service, integrated from the services table, must
   equal arrival rate x mean wait, with every queue visit taken from the events (a request delivered to
   the service until a worker starts it, or its turn ends and withdraws it). Likewise for STT in the
   system (waiting or in service), with each visit's hold rebuilt from the events and the turns table.
   Over the whole run these are sample-path identities, so the tolerance is floating-point (1e-9
   relative): any gap means a visit or a sample is missing from the trace.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

import pipesim
from pipesim.replications import confidence_intervals, queue_metrics, replicate
from pipesim.results import Results
from pipesim.theory import MMc, single_stage_scenario
from pipesim.trace import event_rows

BASE_SEED = 20240601
SERVICE_MEAN = 0.25  # seconds: STT of a short utterance
FAMILY_ALPHA = 0.05
FIGURES = ("mean_wait", "prob_wait", "utilisation")
# name: (servers, utilisation, sessions per run, warm-up s, runs). Warm-up: a few relaxation times of
# the queue, ~1 / (c mu (1 - sqrt(rho))^2). Sizes keep the file within about a minute on 2 busy cores.
QUEUES = {
    "M/M/1 rho=0.5": (1, 0.5, 260, 5.0, 12),
    "M/M/1 rho=0.8": (1, 0.8, 480, 20.0, 12),
    "M/M/4 rho=0.75": (4, 0.75, 400, 5.0, 12),
    "M/M/12 rho=0.8": (12, 0.8, 520, 2.0, 12),
}
COMPARISONS = len(QUEUES) * len(FIGURES)
MAX_HALF_WIDTH = {"mean_wait": 0.8, "prob_wait": 0.4, "utilisation": 0.15}


def fcfs_waits(arrivals: np.ndarray, services: np.ndarray, servers: int) -> np.ndarray:
    """Waits in a first-come-first-served queue with ``servers`` workers (Kiefer-Wolfowitz)."""
    free = [0.0] * servers
    waits = np.empty(len(arrivals))
    for i, (arrived, service) in enumerate(zip(arrivals, services, strict=True)):
        start = max(arrived, heapq.heappop(free))
        waits[i] = start - arrived
        heapq.heappush(free, start + service)
    return waits


def metrics_with_replay(servers: int, warmup_s: float) -> Any:
    measure = queue_metrics("stt", warmup_s)

    def metrics(res: Results) -> dict[str, float]:
        turns = res.turns.sort_values("utterance_ended", kind="stable")
        assert (turns["outcome"] == "complete").all() and (turns["stt_kafka"] == 0).all()
        # With Kafka instantaneous, a turn reaches STT at utterance_ended.
        replayed = fcfs_waits(turns["utterance_ended"].to_numpy(), turns["stt_service"].to_numpy(), servers)
        return {**measure(res), "replay_error": float(np.abs(replayed - turns["stt_queue"].to_numpy()).max())}

    return metrics


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[pd.DataFrame, pd.DataFrame, MMc, float]]:
    out = {}
    for i, (name, (servers, rho, sessions, warmup_s, runs)) in enumerate(QUEUES.items()):
        arrival_rate = rho * servers / SERVICE_MEAN
        started = time.perf_counter()
        # A base seed per queue: with one for all, every queue would reuse the same draws (session ids and
        # stream names are the same), and their errors would all lean the same way.
        scenario = single_stage_scenario(arrival_rate, SERVICE_MEAN, servers, sessions, seed=BASE_SEED + i)
        # workers=1: in this process, as the metrics function is a closure (not picklable).
        per_run = replicate(scenario, n=runs, metrics=metrics_with_replay(servers, warmup_s), workers=1,
                            progress=False).runs
        ci = confidence_intervals(per_run, 1 - FAMILY_ALPHA / COMPARISONS, columns=FIGURES)
        out[name] = (per_run, ci, MMc(arrival_rate, 1 / SERVICE_MEAN, servers), time.perf_counter() - started)
    return out


@pytest.mark.parametrize("name", QUEUES)
def test_stt_is_exactly_a_fcfs_queue(measured: dict, name: str) -> None:
    per_run = measured[name][0]
    assert per_run["replay_error"].max() <= 1e-9


@pytest.mark.parametrize("name", QUEUES)
def test_mmc_matches_erlang_c(measured: dict, name: str) -> None:
    per_run, ci, theory, seconds = measured[name]
    expected = {"mean_wait": theory.mean_wait, "prob_wait": theory.prob_wait, "utilisation": theory.utilisation}
    lines = [f"{name}: {len(per_run)} runs, {per_run['turns'].mean():.0f} turns each, {seconds:.1f} s"]
    problems = []
    for figure, value in expected.items():
        row = ci.loc[figure]
        lines.append(f"  {figure:11s} theory {value:.4f}  sim {row['mean']:.4f} +- {row['half_width']:.4f} "
                     f"({row['half_width'] / value:.0%})")
        if not row["low"] <= value <= row["high"]:
            problems.append(f"{figure}: theory {value:.4f} outside [{row['low']:.4f}, {row['high']:.4f}]")
        if row["half_width"] > MAX_HALF_WIDTH[figure] * value:
            problems.append(f"{figure}: interval too wide to mean anything ({row['half_width'] / value:.0%})")
    print("\n".join(lines))
    assert not problems, "\n".join(lines + problems)


# Little's law on full-model traces ------------------------------------------------------------------------
def queue_visits(res: Results, service: str) -> pd.DataFrame:
    """Every visit of a request to ``service``'s queue, from the events: ``arrived`` (request delivered),
    ``left`` (a worker took it, or its turn ended and withdrew it; inf if the run ended first) and
    ``served`` (which of the two).

    A session may have several requests in one queue: its live attempt and stale ones the orchestrator
    gave up on (``kafka_timeout``), which Kafka delivers all the same. The queue is first come, first
    served, so a worker always takes the session's oldest request: a live one shows as ``service_started``,
    a stale one as ``stale_request_served`` or ``stale_request_dropped``, and this checks which it was."""
    queued: dict[str, list[list]] = {}  # session -> [arrived, stale?] in queue order
    rows = []
    for t, sid, _turn_id, _seq, event, svc, *_rest, detail, _value in event_rows(res.trace):
        if svc != service and event != "turn_ended":
            continue
        mine = queued.setdefault(sid, [])
        if event == "request_delivered":
            mine.append([t, detail == "stale"])
        elif event == "kafka_timeout":
            for visit in mine:  # the live attempt, if it is queued, is stale from now on
                visit[1] = True
        elif event in ("service_started", "stale_request_served", "stale_request_dropped"):
            arrived, stale = mine.pop(0)
            assert stale == (event != "service_started"), f"{sid} {event} at t={t}: the oldest request is " \
                                                          f"{'stale' if stale else 'live'}"
            rows.append((sid, arrived, t, True))
        elif event == "turn_ended":
            live = [v for v in mine if not v[1]]
            assert len(live) <= 1, f"{sid} has {len(live)} live requests queued for {service}"
            if live:
                mine.remove(live[0])
                rows.append((sid, live[0][0], t, False))
    rows += [(sid, arrived, math.inf, False) for sid, mine in queued.items() for arrived, _ in mine]
    return pd.DataFrame(rows, columns=["session_id", "arrived", "left", "served"])


def time_average(res: Results, service: str, column: str, horizon: float) -> float:
    window = pipesim.analysis.utilisation(res.services, window=horizon, start=0.0, end=horizon)
    row = window[window["service"] == service].iloc[0]
    return float(row[column] if column != "system" else row["busy"] + row["queued"])


FULL_RUNS = {
    # Each runs until its last session ends, so that every request has left the system. baseline: 250 of
    # its 1,000 sessions (the identity is as strong, the run 4x shorter).
    "baseline": ("baseline", {"sessions.arrivals.count": 250}),
    # Consumers drop stale requests; STT requests time out on the way there during the outage.
    "kafka_timeouts": ("kafka_timeouts", {"duration_s": None}),
    # With a stall every ~5 s some responses also time out on the way back, after holding a worker; the
    # consumers serve stale requests.
    "kafka_stalls_often": ("kafka_timeouts", {
        "name": "kafka_stalls_often", "duration_s": None, "kafka.stale_requests": "served",
        "kafka.stalls.rate_per_hour": 720, "kafka.stalls.duration_s": {"kind": "lognormal", "p50": 1.0, "p95": 3.0},
        "sessions.arrivals.duration_s": 100}),
}


@pytest.fixture(scope="module", params=FULL_RUNS)
def full_run(request: pytest.FixtureRequest) -> Results:
    name, changes = FULL_RUNS[request.param]
    return pipesim.simulate(pipesim.scenario.as_scenario(name).override(changes), progress=False)


def horizon_of(res: Results) -> float:
    return float(max(res.end_time, res.services["t"].max()))


@pytest.mark.parametrize("service", ["stt", "llm", "tts"])
def test_littles_law_for_the_queue(full_run: Results, service: str) -> None:
    horizon = horizon_of(full_run)
    visits = queue_visits(full_run, service)
    assert len(visits) > 100
    waits = visits["left"].clip(upper=horizon) - visits["arrived"]
    arrival_rate, mean_wait = len(visits) / horizon, float(waits.mean())
    mean_queue = time_average(full_run, service, "queued", horizon)
    print(f"{full_run.scenario.name} {service}: L_q {mean_queue:.6f} = lambda {arrival_rate:.4f}/s x "
          f"W_q {mean_wait:.6f} s ({len(visits)} visits, {(~visits['served']).sum()} withdrawn)")
    assert mean_queue == pytest.approx(arrival_rate * mean_wait, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("service", ["stt", "llm", "tts"])
def test_littles_law_for_the_system(full_run: Results, service: str) -> None:
    # In the system = in the queue + on a worker. A visit's worker time is in its turn's <service>_busy
    # column (stale work served after a timeout included), so W = (waits + worker time) / visits.
    horizon = horizon_of(full_run)
    visits = queue_visits(full_run, service)
    assert np.isfinite(visits["left"]).all(), "the run ended with requests still queued"
    worker_time = float(full_run.turns[f"{service}_busy"].sum())
    arrival_rate = len(visits) / horizon
    sojourn = (float((visits["left"] - visits["arrived"]).sum()) + worker_time) / len(visits)
    mean_in_system = time_average(full_run, service, "system", horizon)
    print(f"{full_run.scenario.name} {service}: L {mean_in_system:.6f} = lambda {arrival_rate:.4f}/s x "
          f"W {sojourn:.6f} s")
    assert mean_in_system == pytest.approx(arrival_rate * sojourn, rel=1e-9)
