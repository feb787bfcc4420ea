"""The requests table: one row per attempt sent to a service, on which Little's law holds exactly, so that
the work a collapsed queue holds (stale requests no turn waits for) is counted, not only judged."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipesim
from pipesim import analysis
from pipesim.cli import main as cli_main
from pipesim.errors import TraceError
from pipesim.replications import run_metrics
from pipesim.results import Results
from pipesim.scenario import Scenario, as_scenario
from pipesim.trace import REQUEST_COLUMNS, REQUEST_OUTCOMES, Trace
from pipesim.vocabulary import SERVICES

#: The LLM collapses under baseline's load with 8 workers; by 500 s its queue holds stale requests.
COLLAPSED = {"services.llm.capacity": 8}
RUNS = {  # name: (scenario, overrides, until)
    "baseline_short": ("baseline", {}, 120.0),
    "kafka_timeouts": ("kafka_timeouts", {}, None),  # stale requests dropped by their consumer
    "load_spike": ("load_spike", {}, None),  # stale requests served
    "collapsed": ("baseline", COLLAPSED, 500.0),
}


def run(name: str, **kw) -> Results:
    scenario, overrides, until = RUNS[name]
    return pipesim.simulate(as_scenario(scenario).override(overrides), seed=42, until=until, progress=False, **kw)


@pytest.fixture(scope="module")
def runs() -> dict[str, Results]:
    return {name: run(name) for name in RUNS}


def assert_littles_law(res: Results, end: float) -> dict[str, tuple[float, float]]:
    """For each service, the time integral over [0, end] of the requests waiting (and of the busy workers),
    from the services table as its time averages read it, against the same from the requests table.
    Returns each service's (time-average queue from the services table, from the requests table)."""
    window = analysis.utilisation(res.services, window=end, start=0.0, end=end).set_index("service")
    requests = res.requests
    out = {}
    for svc in SERVICES:
        r = requests[(requests["service"] == svc) & (requests["enqueued"] < end)]
        # A request leaves the queue when a worker takes it, or unserved (finished, started NaN).
        left = r["started"].fillna(r["finished"]).fillna(end).clip(upper=end)
        waiting = float((left - r["enqueued"]).sum())
        served = r[r["started"] < end]
        held = float((served["finished"].fillna(end).clip(upper=end) - served["started"]).sum())
        queued_area = float(window.loc[svc, "queued"]) * end if svc in window.index else 0.0
        busy_area = float(window.loc[svc, "busy"]) * end if svc in window.index else 0.0
        assert waiting == pytest.approx(queued_area, rel=1e-9, abs=1e-9), svc
        assert held == pytest.approx(busy_area, rel=1e-9, abs=1e-9), svc
        out[svc] = (queued_area / end, waiting / end)
    return out


def end_of(res: Results, name: str) -> float:
    until = RUNS[name][2]
    return until if until is not None else float(max(res.services["t"].max(), res.requests["finished"].max()))


@pytest.mark.parametrize("name", RUNS)
def test_littles_law_holds_exactly_on_the_requests_table(runs, name):
    res = runs[name]
    averages = assert_littles_law(res, end_of(res, name))
    if name == "collapsed":  # the queue the turns' own waits do not show
        assert averages["llm"][0] > 20
        assert (res.requests["outcome"] == "waiting").sum() > 500


def test_littles_law_holds_on_a_streamed_run_and_its_folder(runs, tmp_path):
    streamed = run("collapsed", out=tmp_path)
    pd.testing.assert_frame_equal(streamed.requests, runs["collapsed"].requests, check_exact=True)
    loaded = Results.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.requests, runs["collapsed"].requests, check_exact=True)
    assert_littles_law(loaded, RUNS["collapsed"][2])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.tuples(*[st.integers(1, 3)] * 3), timeout=st.floats(0.3, 3.0),
       stale=st.sampled_from(["served", "dropped"]), retries=st.integers(0, 3), barge=st.floats(0.0, 0.5),
       until=st.none() | st.floats(2.0, 60.0), seed=st.integers(0, 2**16))
def test_littles_law_holds_in_every_mode(capacity, timeout, stale, retries, barge, until, seed):
    scn = Scenario.model_validate({
        "sessions": {"arrivals": {"kind": "at_once", "count": 12}, "turns": 2, "barge_in_probability": barge},
        "kafka": {"request_timeout_s": timeout, "stale_requests": stale, "max_retries": retries,
                  "stalls": {"rate_per_hour": 120.0}},
        "services": {name: {"capacity": c} for name, c in zip(SERVICES, capacity, strict=True)}})
    res = pipesim.simulate(scn, seed=seed, until=until, progress=False)
    end = until if until is not None else float(max(res.services["t"].max(), res.requests["finished"].max()))
    assert_littles_law(res, end)
    assert set(res.requests["outcome"].astype(str)) <= set(REQUEST_OUTCOMES)


def test_every_attempt_has_one_row_and_its_worker_time_is_the_turns_busy_time(runs):
    res = runs["kafka_timeouts"]
    requests, turns = res.requests, res.turns
    assert list(requests.columns) == list(REQUEST_COLUMNS)
    assert not requests.duplicated(["session_id", "turn_id", "service", "attempt"]).any()
    key = ["session_id", "turn_id", "service"]
    attempts = requests.astype({"session_id": str, "service": str}).groupby(key)["attempt"].agg(["max", "count"])
    assert (attempts["max"] == attempts["count"]).all()  # 1..n, none missing
    complete = turns[turns["outcome"] == "complete"].set_index(["session_id", "turn_id"])
    held = analysis.worker_time(requests).groupby(
        [requests["session_id"].astype(str), requests["turn_id"], requests["service"].astype(str)]).sum()
    for svc in SERVICES:
        n = attempts.xs(svc, level="service")["count"].reindex(complete.index)
        assert (n == complete[f"{svc}_timeouts"] + 1).all(), svc  # the timed-out attempts, then the one answered
        busy = held.xs(svc, level=2).reindex(turns.set_index(["session_id", "turn_id"]).index, fill_value=0.0)
        np.testing.assert_allclose(busy.to_numpy(), turns[f"{svc}_busy"].to_numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "outcome", "event"), [("load_spike", "stale", "stale_request_served"),
                                                        ("kafka_timeouts", "dropped", "stale_request_dropped")])
def test_stale_and_dropped_requests_are_those_the_model_reports(runs, name, outcome, event):
    res = runs[name]
    events = res.events
    reported = events[events["event"] == event]["service"].astype(str).value_counts()
    rows = res.requests[res.requests["outcome"] == outcome]["service"].astype(str).value_counts()
    assert reported.sum() > 0
    assert rows.sort_index().to_dict() == reported.sort_index().to_dict()
    if outcome == "dropped":  # skipped when read: no worker time
        assert res.requests[res.requests["outcome"] == "dropped"]["started"].isna().all()


def test_a_cancelled_turn_withdraws_its_queued_request_and_frees_its_worker():
    talk = {"a": 1.0, "b": 1.5, "c": 1.0}
    pause = {"a": 5.0, "b": 4.0, "c": 2.302}  # a on its worker, b queued behind it, c still in Kafka
    scn = Scenario.model_validate({
        "sessions": {"arrivals": {"kind": "at_once", "count": 0}, "end_of_utterance_delay_s": 0.3,
                     "scripted": [{"id": sid, "timeline": [{"at": 0.0, "action": "start"},
                                                            {"at": talk[sid], "speak": 1.0},
                                                            {"at": pause[sid], "action": "pause"}]}
                                  for sid in talk]},
        "kafka": {"latency_s": 0.005, "request_timeout_s": 30.0},
        "services": {"stt": {"capacity": 1, "latency_s": 5.0}}})
    res = pipesim.simulate(scn, progress=False)
    rows = res.requests.astype({"session_id": str, "outcome": str}).set_index("session_id").sort_index()
    assert rows["outcome"].to_dict() == {"a": "served", "b": "cancelled", "c": "cancelled"}
    assert rows.loc["a", ["enqueued", "started", "finished"]].tolist() == pytest.approx([2.305, 2.305, 5.0])
    assert rows.loc["b", "enqueued"] == pytest.approx(2.805) and rows.loc["b", "finished"] == pytest.approx(4.0)
    assert math.isnan(rows.loc["b", "started"])
    assert rows.loc["c", ["enqueued", "started", "finished"]].isna().all()  # never reached the queue
    assert_littles_law(res, 10.0)


def test_stale_work_share_is_the_stale_requests_share_of_worker_time(runs):
    res = runs["collapsed"]
    end = RUNS["collapsed"][2]
    share = analysis.stale_work_share(res.requests, end=end)
    r = res.requests[res.requests["service"] == "llm"]
    held = (r["finished"].fillna(end) - r["started"]).fillna(0.0)
    assert share["llm"] == pytest.approx(held[r["outcome"] == "stale"].sum() / held.sum(), rel=1e-12)
    assert share["llm"] > 0.01 and share["stt"] == 0.0
    summary = res.services_summary()
    assert summary.loc["llm", "stale_work_share"] > 0.01
    assert summary.loc["llm", "stale"] == (r["outcome"] == "stale").sum()
    metrics = run_metrics(res)
    assert metrics["llm_stale_work_share"] == pytest.approx(analysis.stale_work_share(res.requests)["llm"])
    assert run_metrics(runs["baseline_short"])["llm_stale_work_share"] == 0.0


def test_pipesim_run_shows_the_stale_work_share_only_when_there_is_some(capsys):
    assert cli_main(["run", "frontend_demo"]) == 0  # its LLM requests time out behind a slow first token
    share = analysis.stale_work_share(pipesim.simulate("frontend_demo", progress=False).requests)["llm"]
    assert f"stale work: llm {share:.1%} of the worker time" in capsys.readouterr().out
    assert cli_main(["run", "baseline", "--until", "60"]) == 0
    assert "stale work" not in capsys.readouterr().out
    assert cli_main(["run", "baseline", "--until", "60"]) == 0
    assert "stale work" not in capsys.readouterr().out


def test_save_and_load_give_the_table_back_exactly_and_the_same_bytes_each_time(runs, tmp_path):
    res = runs["baseline_short"]  # cut by ``until``: requests still on a worker at the end, finished NaN
    assert res.requests["finished"].isna().any()
    res.save(tmp_path / "a", csv=True, jsonl=True)
    for loaded in (Results.load(tmp_path / "a"), Results.load(tmp_path / "a" / "trace.jsonl")):
        pd.testing.assert_frame_equal(loaded.requests, res.requests, check_exact=True)
    csv = pd.read_csv(tmp_path / "a" / "requests.csv")
    assert len(csv) == len(res.requests) and list(csv.columns) == list(REQUEST_COLUMNS)
    run("baseline_short").save(tmp_path / "b")
    digest = [hashlib.sha256((tmp_path / d / "requests.parquet").read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1]


def test_a_folder_saved_before_the_table_existed_loads_with_an_empty_one(runs, tmp_path):
    runs["baseline_short"].save(tmp_path)
    (tmp_path / "requests.parquet").unlink()
    requests = Results.load(tmp_path).requests
    assert requests.empty and list(requests.columns) == list(REQUEST_COLUMNS)


@pytest.mark.parametrize(("line", "message"), [
    ('{"record":"request","session_id":"s","turn_id":1,"service":"llm","outcome":"served"}',
     "a request needs session_id, turn_id, service, attempt, outcome"),
    ('{"record":"request","session_id":"s","turn_id":1,"service":"llm","attempt":1.5,"outcome":"served"}',
     "attempt must be an integer, got 1.5"),
    ('{"record":"request","session_id":"s","turn_id":1,"service":"llm","attempt":4294967296,"outcome":"x"}',
     "turn_id or attempt out of range"),
])
def test_a_bad_request_line_of_a_trace_is_named(tmp_path, line, message):
    path = tmp_path / "trace.jsonl"
    pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 2}}}, progress=False).trace.to_jsonl(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], line, *lines[3:]]) + "\n")
    with pytest.raises(TraceError) as err:
        Results.load(path)
    assert str(err.value) == f"{path}:4: {message}"


def test_a_limited_trace_keeps_the_requests_of_about_as_many_turns_as_it_keeps():
    t = Trace(limit=1_600)  # the live server's ring: 100 turns, 400 requests
    for i in range(16_000):
        t.add_request(("s", i, "llm", 1, float(i), float(i), i + 1.0, "served"))
    kept = t.requests_frame()
    assert kept["turn_id"].tolist() == list(range(15_600, 16_000))
    assert sum(batch.num_rows for batch in t._requests.batches) < 1_000  # the rest was let go
