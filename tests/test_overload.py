"""Overload the way real orchestrators overload: the request timeout covers the wait for a worker, timed-out
requests are still delivered (and served or dropped), workers finish what they started, and every column of
the turns table stays exact."""

import numpy as np
import pytest

import pipesim
from pipesim.scenario import Scenario

# baseline with a quarter of its LLM workers: the queue grows far past the 2 s request timeout.
UNDERSIZED = {"services.llm.capacity": 4}


def _run(name: str, changes: dict, until: float | None = None) -> pipesim.Results:
    scn = pipesim.load_scenario(f"scenarios/{name}.yaml").override(changes)
    return pipesim.simulate(scn, until=until, progress=False)


@pytest.fixture(scope="module")
def overloaded() -> dict[str, pipesim.Results]:
    return {mode: _run("baseline", {**UNDERSIZED, "kafka.stale_requests": mode,
                                    "sessions.arrivals.count": 150}) for mode in ("served", "dropped")}


def test_waiting_for_a_worker_counts_towards_the_request_timeout(overloaded):
    turns = overloaded["served"].turns
    timeout = 2.0
    assert turns["llm_timeouts"].sum() > 100
    # No attempt waits for a worker longer than the timeout: a turn's waits add up to at most one timeout
    # per attempt.
    attempts = turns["llm_timeouts"] + 1
    assert (turns["llm_queue"].dropna() <= attempts[turns["llm_queue"].notna()] * timeout + 1e-9).all()


def test_served_stale_requests_amplify_load_and_goodput_falls(overloaded):
    served, dropped = overloaded["served"], overloaded["dropped"]
    ev = served.events
    attempts = served.turns["llm_timeouts"].sum() + len(served.turns)
    assert attempts > 1.5 * len(served.turns)  # more attempts than turns: retry amplification
    stale = ev[ev["event"] == "stale_request_served"]
    assert (stale["service"] == "llm").sum() > 100
    # Workers are saturated, yet fewer turns complete than when the consumer drops stale requests.
    complete = {m: (r.turns["outcome"] == "complete").sum() for m, r in overloaded.items()}
    assert complete["served"] < complete["dropped"]
    # Worker time spent on answers nobody waits for any more.
    wasted = stale["value"].sum()
    assert wasted > 0.1 * served.turns["llm_busy"].sum()
    assert not (dropped.events["event"] == "stale_request_served").any()
    assert (dropped.events["event"] == "stale_request_dropped").sum() > 100


@pytest.mark.parametrize("mode", ["served", "dropped"])
def test_a_worker_whose_answer_came_too_late_finishes_its_job(mode):
    # STT always takes 3 s and the orchestrator waits 2 s: every attempt times out while its worker works.
    scn = Scenario.model_validate({
        "sessions": {"arrivals": {"kind": "at_once", "count": 1}, "turns": 1, "first_speech_delay_s": 0.0,
                     "utterance_s": 1.0, "end_of_utterance_delay_s": 0.0, "max_repeats": 0},
        "services": {"stt": {"capacity": 1, "latency_s": 3.0}},
        "kafka": {"latency_s": 0.0, "request_timeout_s": 2.0, "max_retries": 1, "backoff_s": 0.5,
                  "stale_requests": mode}})
    res = pipesim.simulate(scn, progress=False)
    turn = res.turns.iloc[0]
    assert turn["outcome"] == "failed" and turn["stt_timeouts"] == 2
    svc = res.services[res.services["service"] == "stt"]
    # Attempt 1: sent at 1.0, worker busy 1.0-4.0 although the orchestrator gave up at 3.0.
    # Attempt 2: sent at 3.5 after the backoff, waits for the worker until 4.0 (0.5 s in the queue)...
    busy_until = svc.loc[svc["busy"] > 0, "t"]
    assert busy_until.min() == pytest.approx(1.0)
    released = svc[(svc["busy"] == 0) & (svc["t"] > 1.0)]["t"]
    assert released.iloc[0] == pytest.approx(4.0)  # not 3.0: the first worker finished its job
    # ...then gets it at 4.0 and works until 7.0: its deadline (5.5) passes on the worker, so nothing is
    # stale in the queue and both modes do the same.
    assert released.iloc[-1] == pytest.approx(7.0)
    assert turn["stt_queue"] == pytest.approx(0.5)
    assert turn["stt_busy"] == pytest.approx(6.0)


def test_dropped_requests_are_skipped_when_a_worker_reads_them():
    # Two users at once, one STT worker of 3 s, a 2 s timeout: the second request is still queued at its
    # deadline. Served, it holds the worker 3 s more; dropped, the worker skips it at once.
    def run(mode: str) -> pipesim.Results:
        return pipesim.simulate(Scenario.model_validate({
            "sessions": {"arrivals": {"kind": "at_once", "count": 2}, "turns": 1, "first_speech_delay_s": 0.0,
                         "utterance_s": 1.0, "end_of_utterance_delay_s": 0.0, "max_repeats": 0},
            "services": {"stt": {"capacity": 1, "latency_s": 3.0}},
            "kafka": {"latency_s": 0.0, "request_timeout_s": 2.0, "max_retries": 0, "stale_requests": mode}}),
            progress=False)

    served, dropped = run("served"), run("dropped")
    assert (served.events["event"] == "stale_request_served").sum() == 1
    assert (dropped.events["event"] == "stale_request_dropped").sum() == 1
    assert served.turns["stt_busy"].sum() == pytest.approx(6.0)
    assert dropped.turns["stt_busy"].sum() == pytest.approx(3.0)


@pytest.mark.parametrize("changes", [UNDERSIZED, {**UNDERSIZED, "kafka.stale_requests": "dropped"},
                                     {"services.stt.capacity": 2}, {}], ids=["llm4", "llm4-dropped", "stt2", "base"])
def test_every_turn_adds_up_exactly_under_overload(changes):
    res = _run("baseline", {**changes, "sessions.arrivals.count": 100})
    t = res.turns
    assert len(t) > 300
    reached = t[t["e2e_latency"].notna()]
    for x in ("stt", "llm", "tts"):
        parts = reached[[f"{x}_kafka", f"{x}_queue", f"{x}_service", f"{x}_retry"]].sum(axis=1)
        np.testing.assert_allclose(parts, reached[f"{x}_stage"], atol=1e-9)
        assert (reached[[f"{x}_queue", f"{x}_retry"]] >= -1e-12).all().all()
    total = reached[["end_of_utterance_delay", "stt_stage", "llm_stage", "tts_stage"]].sum(axis=1)
    np.testing.assert_allclose(total, reached["e2e_latency"], atol=1e-9)


@pytest.mark.parametrize("changes", [UNDERSIZED, {}], ids=["llm4", "base"])
def test_busy_columns_add_up_to_the_pools_busy_time(changes):
    res = _run("baseline", {**changes, "sessions.arrivals.count": 150})  # runs to the end: nothing in flight
    svc = res.services
    for x in ("stt", "llm", "tts"):
        s = svc[svc["service"] == x]
        busy_time = float((s["busy"].iloc[:-1].to_numpy() * np.diff(s["t"].to_numpy())).sum())
        assert res.turns[f"{x}_busy"].sum() == pytest.approx(busy_time, rel=1e-9)
    # The LLM's worker time is its whole generation, not only up to the first phrase.
    done = res.turns[res.turns["outcome"] == "complete"]
    generation = done["llm_duration"] - done[["llm_kafka", "llm_queue", "llm_retry"]].sum(axis=1)
    assert (done["llm_busy"] >= generation - 1e-9).all()
    assert (done["llm_busy"] > done["llm_service"]).mean() > 0.99
