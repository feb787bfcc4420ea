"""pipesim.analysis: percentiles, the latency breakdown, utilisation, state durations, incidents, compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipesim
from pipesim import analysis

SMALL = {"name": "small", "sessions": {"arrivals": {"kind": "at_once", "count": 30}}}


@pytest.fixture(scope="module")
def small() -> pipesim.Results:
    return pipesim.simulate(SMALL, seed=3, progress=False)


@pytest.fixture(scope="module")
def kafka() -> pipesim.Results:
    return pipesim.simulate("kafka_timeouts", progress=False)


@pytest.fixture(scope="module")
def spike() -> pipesim.Results:
    return pipesim.simulate("load_spike", progress=False)


# Percentiles and grouping columns -------------------------------------------------------------------------
def test_percentiles_overall_and_grouped_match_pandas(small: pipesim.Results) -> None:
    turns = small.turns
    overall = analysis.percentiles(turns, ["e2e_latency", "stt_stage"])
    e2e = turns["e2e_latency"].dropna()
    assert overall.loc["e2e_latency", "count"] == len(e2e)
    assert overall.loc["e2e_latency", "p95"] == pytest.approx(e2e.quantile(0.95))
    assert list(overall.columns) == ["count", "mean", "p50", "p90", "p95", "p99", "max"]

    grouped = analysis.percentiles(turns, ["e2e_latency"], by="session_id")
    for sid, g in turns.groupby("session_id"):
        row = grouped.loc[(sid, "e2e_latency")]
        assert row["count"] == g["e2e_latency"].count()
        if row["count"]:
            assert row["p50"] == pytest.approx(g["e2e_latency"].median())
            assert row["max"] == pytest.approx(g["e2e_latency"].max())

    two = analysis.percentiles(turns, ["e2e_latency"], by=["session_id", "outcome"])
    assert two.index.names == ["session_id", "outcome", "figure"]
    assert two["count"].sum() == e2e.count()


def test_percentiles_in_milliseconds() -> None:
    turns = pd.DataFrame({"e2e_latency": [1.0, 2.0, 3.0]})
    table = analysis.percentiles(turns, ["e2e_latency"], ms=True)
    assert list(table.columns) == ["count", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"]
    assert table.loc["e2e_latency", "p50_ms"] == pytest.approx(2000.0)
    assert table.loc["e2e_latency", "count"] == 3


def test_quality_band_follows_the_poor_threshold() -> None:
    q = pd.Series([0.0, 0.3499, 0.35, 0.5999, 0.6, 1.0, np.nan])
    bands = analysis.quality_band(q)
    assert bands.name == "quality_band"
    assert bands.tolist()[:6] == ["poor", "poor", "fair", "fair", "good", "good"]
    assert pd.isna(bands.iloc[6])
    assert list(bands.cat.categories) == ["poor", "fair", "good"]
    custom = analysis.quality_band(q, bins=[0.5], labels=["low", "high"])
    assert custom.tolist()[:3] == ["low", "low", "low"]
    with pytest.raises(ValueError, match="labels"):
        analysis.quality_band(q, bins=[0.5], labels=["a"])


def test_grouping_by_quality_band_and_time_window(small: pipesim.Results) -> None:
    turns = small.turns.assign(quality_band=analysis.quality_band(small.turns),
                               time_window=analysis.time_window(small.turns, 20.0))
    assert (turns["time_window"] <= turns["utterance_ended"]).all()
    assert (turns["utterance_ended"] < turns["time_window"] + 20.0).all()
    assert set(turns["time_window"] % 20.0) == {0.0}
    by_band = analysis.percentiles(turns, ["e2e_latency"], by="quality_band")
    assert by_band["count"].sum() == turns["e2e_latency"].count()
    by_window = analysis.latency_over_time(turns, 20.0)
    assert by_window["count"].sum() == turns["e2e_latency"].count()
    assert by_window.index.is_monotonic_increasing


def test_window_phase_before_during_recovery_after() -> None:
    windows = pd.DataFrame({"start": [100.0, 100.0, 300.0], "end": [110.0, 110.0, 301.0],
                            "topic": ["stt", "llm", "all"], "cause": "scheduled"})
    t = pd.Series([5.0, 100.0, 109.9, 110.0, 139.9, 140.0, 300.5, 320.0, np.nan])
    phase = analysis.window_phase(t, windows, recovery_s=30)
    assert phase.tolist()[:8] == ["before", "during", "during", "recovery", "recovery", "after", "during",
                                  "recovery"]
    assert pd.isna(phase.iloc[8])
    none = analysis.window_phase(t.iloc[:3], windows.iloc[:0])
    assert set(none) == {"before"}


def test_combine_labels_runs_for_grouping(small: pipesim.Results) -> None:
    other = pipesim.simulate(SMALL, seed=4, progress=False)
    both = analysis.combine([small, other])
    assert list(both["scenario"].cat.categories) == ["small (seed 3)", "small (seed 4)"]
    assert len(both) == len(small.turns) + len(other.turns)
    named = analysis.combine({"a": small, "b": other.turns}, label="run")
    table = analysis.percentiles(named, ["e2e_latency"], by="run")
    assert table.loc[("a", "e2e_latency"), "count"] == small.turns["e2e_latency"].count()
    sessions = analysis.combine({"a": small}, table="sessions")
    assert (sessions["scenario"] == "a").all() and len(sessions) == 30


# The breakdown --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small", "kafka", "spike", "barge_in", "poor_audio"])
def test_breakdown_parts_add_up_on_every_turn(name: str, request: pytest.FixtureRequest) -> None:
    res = (request.getfixturevalue(name) if name in ("small", "kafka", "spike")
           else pipesim.simulate(name, progress=False))
    b = res.breakdown()
    reached = res.turns["e2e_latency"].notna()
    assert len(b) == reached.sum() > 0
    parts = b[list(analysis.PARTS)]
    assert parts.notna().all().all()
    assert (parts >= -1e-9).all().all(), "no part of a turn's latency is negative"
    assert np.isclose(parts.sum(axis=1), b["e2e_latency"], rtol=0, atol=1e-9).all()
    # The stage columns of the turns table are the sums of their parts too.
    t = res.turns[reached]
    assert np.isclose(b[["llm_kafka", "llm_queue", "llm_first_token", "llm_first_phrase", "llm_retry"]]
                      .sum(axis=1), t["llm_stage"]).all()
    assert np.isclose(b["llm_kafka"] + b["llm_queue"] + b["llm_first_token"] + b["llm_retry"], b["ttft"]).all()
    done = b["llm_total"].notna()  # a barge-in may cut the LLM before its last token
    assert (b.loc[done, "llm_total"] + 1e-9 >= t.loc[done, "llm_stage"]).all()
    assert np.isclose(b.loc[done, "llm_total"] - t.loc[done, "llm_stage"], b.loc[done, "streaming_overlap"]).all()
    assert np.isclose(b["tts_total"] - b["ttfb"], t["turn_end"] - t["first_audio"]).all()


def test_breakdown_covers_retries_and_queueing(kafka: pipesim.Results, spike: pipesim.Results) -> None:
    assert (kafka.breakdown()["stt_retry"] > 0).sum() > 10, "kafka_timeouts has turns that retried"
    assert (spike.breakdown()["llm_queue"] > 1.0).sum() > 20, "load_spike has turns that queued"


def test_percentile_breakdown_uses_the_turns_around_each_percentile(kafka: pipesim.Results) -> None:
    table = kafka.percentile_breakdown()
    assert list(table.index) == ["p50", "p95", "p99"]
    assert np.allclose(table[list(analysis.PARTS)].sum(axis=1), table["e2e_mean"])
    e2e = kafka.turns["e2e_latency"].dropna()
    for name, q, w in (("p50", 0.5, 0.025), ("p95", 0.95, 0.025), ("p99", 0.99, 0.005)):
        band = e2e[(e2e >= e2e.quantile(q - w)) & (e2e <= e2e.quantile(q + w))]
        assert table.loc[name, "turns"] == len(band)
        assert table.loc[name, "e2e_mean"] == pytest.approx(band.mean())
        assert table.loc[name, "e2e_quantile"] == pytest.approx(e2e.quantile(q))
    assert table["e2e_mean"].is_monotonic_increasing
    one = analysis.percentile_breakdown(kafka.turns.iloc[:3], [0.99])
    assert one.loc["p99", "turns"] >= 1


# Utilisation ----------------------------------------------------------------------------------------------
def _samples(rows: list[tuple[float, int, int]], service: str = "llm", capacity: int = 2) -> pd.DataFrame:
    return pd.DataFrame([(t, service, busy, queued, capacity) for t, busy, queued in rows],
                        columns=["t", "service", "busy", "queued", "capacity"])


def test_utilisation_is_time_weighted_on_a_hand_made_step_function() -> None:
    # Idle until 2 s; 1 busy 2..5; 2 busy and 3 queued 5..5 (replaced at the same instant by 2 busy,
    # 1 queued) until 12; idle from 12. Two workers.
    s = _samples([(2.0, 1, 0), (5.0, 2, 3), (5.0, 2, 1), (12.0, 0, 0)])
    u = analysis.utilisation(s, window=10.0, end=20.0)
    assert u[["start", "end"]].to_numpy().tolist() == [[0.0, 10.0], [10.0, 20.0]]
    first, second = u.iloc[0], u.iloc[1]
    assert first["busy"] == pytest.approx((3 * 1 + 5 * 2) / 10)       # 1.3 busy workers on average
    assert first["utilisation"] == pytest.approx(1.3 / 2)
    assert first["queued"] == pytest.approx(5 * 1 / 10)                # the 3 lasted no time at all
    assert first["queued_max"] == 3
    assert second["busy"] == pytest.approx(2 * 2 / 10)
    assert second["queued"] == pytest.approx(2 * 1 / 10)
    assert second["queued_max"] == 1                                   # held over from the last window
    assert (u["capacity"] == 2).all() and (u["service"] == "llm").all()


def test_utilisation_windows_split_anywhere_and_the_last_window_is_partial() -> None:
    s = _samples([(0.0, 2, 0), (3.0, 0, 0)], capacity=4)
    u = analysis.utilisation(s, window=2.0, end=5.0)
    assert u["end"].tolist() == [2.0, 4.0, 5.0]
    assert u["utilisation"].tolist() == pytest.approx([0.5, 0.25, 0.0])
    whole = analysis.utilisation(s, window=100.0, end=5.0)
    weights = (u["end"] - u["start"]) / 5.0
    assert whole["utilisation"].iloc[0] == pytest.approx((u["utilisation"] * weights).sum())


def test_utilisation_reads_samples_between_a_release_and_its_grant_as_settled() -> None:
    # A sample right after a release shows an idle worker and a queue; the pool hands the worker over
    # at once, so it counts as fully busy with one request fewer waiting.
    s = _samples([(0.0, 2, 2), (1.0, 1, 2), (2.0, 2, 1), (4.0, 0, 0)])
    u = analysis.utilisation(s, window=4.0, end=4.0)
    assert u["utilisation"].iloc[0] == pytest.approx(1.0)
    assert u["queued"].iloc[0] == pytest.approx((2 + 1 + 2 * 1) / 4)
    raw = analysis.utilisation(s, window=4.0, end=4.0, settle=False)
    assert raw["utilisation"].iloc[0] == pytest.approx((2 + 1 + 2 * 2) / 4 / 2)
    settled = analysis.settled_services(s)
    assert settled[["busy", "queued"]].to_numpy().tolist() == [[2, 2], [2, 1], [2, 1], [0, 0]]


def test_utilisation_of_a_run(spike: pipesim.Results) -> None:
    u = spike.utilisation(window=30.0)
    assert set(u["service"]) == {"stt", "llm", "tts"}
    assert u["utilisation"].between(0, 1 + 1e-9).all()
    assert (u["queued_max"] >= u["queued"] - 1e-9).all()
    assert u["end"].max() == pytest.approx(spike.end_time)
    peak = u[u["service"] == "llm"].sort_values("queued").iloc[-1]
    assert peak["utilisation"] == pytest.approx(1.0), "a service with a queue is fully busy"
    assert analysis.utilisation(spike.services.iloc[:0]).empty


# Sessions ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["state", "status", "stt", "llm", "tts"])
def test_state_durations_add_up_to_each_session_lifetime(small: pipesim.Results, column: str) -> None:
    durations = small.state_durations(column)
    lifetime = small.sessions.set_index("session_id")["duration"]
    assert set(durations.index) == set(lifetime.index)
    assert np.allclose(durations.sum(axis=1), lifetime.loc[durations.index])
    assert (durations >= 0).all().all()
    if column == "state":
        assert list(durations.columns) == ["listening", "processing", "complete"]
        assert (durations["processing"] > 0).all()


def test_state_durations_of_sessions_still_open_run_to_the_end(kafka: pipesim.Results) -> None:
    cut = pipesim.simulate("kafka_timeouts", until=150.0, progress=False)
    durations = cut.state_durations()
    sessions = cut.sessions.set_index("session_id")
    ended = sessions["ended"].fillna(cut.end_time)
    assert sessions["ended"].isna().any(), "some sessions are still open at 150 s"
    assert np.allclose(durations.sum(axis=1), (ended - sessions["created"]).loc[durations.index])


def test_state_durations_rejects_unknown_columns(small: pipesim.Results) -> None:
    with pytest.raises(ValueError, match="column must be one of"):
        small.state_durations("colour")


def test_paused_time_shows_in_status_durations() -> None:
    res = pipesim.simulate("frontend_demo", until=40.0, progress=False)
    status = res.state_durations("status")
    assert status.loc["demo-1", "paused"] == pytest.approx(3.0)  # paused at 12 s, resumed at 15 s
    assert status.loc["demo-1"].sum() == pytest.approx(30.0)


# Incidents and comparison ------------------------------------------------------------------------------------
def test_incidents_agree_with_counts(kafka: pipesim.Results) -> None:
    counts = kafka.counts()
    inc = kafka.incidents()
    assert (inc["event"] == "kafka_timeout").sum() == counts["kafka_timeouts"]
    assert (inc["event"] == "turn_failed").sum() == counts["failed"]
    assert (inc["event"] == "barge_in").sum() == counts["barge_in"]
    per_window = analysis.incident_counts(kafka.events, 10.0)
    assert per_window["kafka_timeouts"].sum() == counts["kafka_timeouts"]
    assert (per_window[["stt_timeouts", "llm_timeouts", "tts_timeouts"]].sum(axis=1)
            == per_window["kafka_timeouts"]).all()
    assert per_window["failed_turns"].sum() == counts["failed"]
    outage = per_window.loc[120.0:130.0, "kafka_timeouts"].sum()
    assert outage > per_window["kafka_timeouts"].sum() / 2, "most timeouts fall in the scheduled outage"
    assert per_window.index[0] == 0.0 and per_window.index.to_series().diff().dropna().eq(10.0).all()


def test_incident_summary_splits_timeouts_into_retries_and_give_ups(kafka: pipesim.Results) -> None:
    summary = kafka.incident_summary()
    counts = kafka.counts()
    assert summary["kafka_timeouts"] == counts["kafka_timeouts"] == summary["retries"] + summary["failed_by_kafka"]
    assert summary["failed_turns"] == counts["failed"] and summary["barge_ins"] == counts["barge_in"]
    kafka_errors = kafka.turns["error"].str.contains("Kafka timed out", na=False).sum()
    assert summary["failed_by_kafka"] == kafka_errors > 0
    assert summary["stt_timeouts"] + summary["llm_timeouts"] + summary["tts_timeouts"] == summary["kafka_timeouts"]


#: Users with bad microphones and no Kafka trouble: turns fail for poor audio (and the odd service error) only.
POOR_AUDIO = {"name": "poor", "sessions": {"arrivals": {"kind": "at_once", "count": 40}},
              "quality": {"snr_mean_db": 12, "poor_stt_failure_probability": 0.5}}


def test_failures_by_cause_name_the_cause_and_add_up(kafka: pipesim.Results) -> None:
    poor = pipesim.simulate(POOR_AUDIO, seed=4, progress=False)
    for run in (kafka, poor):
        causes = run.failures()
        assert causes.sum() == run.counts()["failed"] > 0
        assert causes.is_monotonic_decreasing and causes.name == "failed_turns"
        per_window = analysis.failure_counts(run.events, 10.0)  # the events say the same as the turns
        assert per_window.sum().to_dict() == causes.to_dict()
        assert per_window.index.equals(analysis.incident_counts(run.events, 10.0).index)
    assert poor.counts()["kafka_timeouts"] == 0
    assert poor.failures().index[0] == "stt: low audio quality, re-prompting the user"
    assert any(cause.endswith("Kafka timed out 4 times") for cause in kafka.failures().index)


def test_the_cli_summary_gives_failed_turns_by_cause(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipesim.cli import main

    scenario = tmp_path / "poor.json"
    scenario.write_text(json.dumps(POOR_AUDIO))
    assert main(["run", str(scenario), "--seed", "4"]) == 0
    out = capsys.readouterr().out
    expected = pipesim.simulate(POOR_AUDIO, seed=4, progress=False).failures()
    for cause, n in expected.items():
        assert f"  failed, {cause}: {n}\n" in out
    assert "failed, stt: low audio quality, re-prompting the user" in out


@given(st.sampled_from(["stt", "llm", "tts"]), st.floats(0, 1), st.integers(0, 100))
def test_a_cause_is_the_same_whatever_the_turn_s_details(service: str, quality: float, budget: int) -> None:
    audio = analysis.failure_cause(f"{service}: low audio quality ({quality:.2f}), re-prompting the user")
    assert audio == f"{service}: low audio quality, re-prompting the user"
    kafka = analysis.failure_cause(f"{service}: Kafka timed out {budget + 1} times (retry budget {budget})")
    assert kafka == f"{service}: Kafka timed out {budget + 1} times"


def test_a_run_without_failures_has_no_causes(small: pipesim.Results) -> None:
    quiet = small.turns[small.turns["outcome"] != "failed"]
    assert analysis.failures(quiet).empty and analysis.failures(quiet.iloc[:0]).empty
    events = small.events[small.events["event"] != "turn_failed"]
    assert analysis.failure_counts(events, 10.0).shape[1] == 0


def test_compare_side_by_side(small: pipesim.Results, kafka: pipesim.Results) -> None:
    table = analysis.compare(small, kafka)
    assert list(table.index) == list(analysis.FIGURES)
    assert ("p95_ms", "small") in table.columns and ("p95_ms", "kafka_timeouts") in table.columns
    for stat in ("p50", "p95", "p99"):
        a = small.turns["e2e_latency"].quantile(float(stat[1:]) / 100) * 1000
        b = kafka.turns["e2e_latency"].quantile(float(stat[1:]) / 100) * 1000
        row = table.loc["e2e_latency"]
        assert row[(f"{stat}_ms", "small")] == pytest.approx(a, abs=0.051)
        assert row[(f"{stat}_ms", "delta")] == pytest.approx(b - a, abs=0.11)
    assert table.loc["e2e_latency", ("count", "kafka_timeouts")] == kafka.turns["e2e_latency"].count()
    same = small.compare(small)
    assert ("p50_ms", "small (a)") in same.columns
    assert (same.xs("delta", axis=1, level=1) == 0).all().all()
    labelled = analysis.compare(small.turns, kafka.turns, labels=["before", "after"])
    assert labelled.columns.get_level_values(1).unique().tolist() == ["before", "after", "delta"]
    with pytest.raises(ValueError, match="labels must differ"):
        analysis.compare(small, kafka, labels=["x", "x"])


def test_existing_summaries_are_unchanged(small: pipesim.Results) -> None:
    summary = small.summary()
    assert list(summary.columns) == ["count", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    assert list(summary.index) == list(analysis.FIGURES)
    assert analysis.STAGES == ("end_of_utterance_delay", "stt_stage", "llm_stage", "tts_stage")
    assert set(small.counts()) == {"turns", "complete", "barge_in", "failed", "cancelled", "kafka_timeouts"}


def test_results_html_is_compact_and_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    res = pipesim.simulate(SMALL, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    html = res._repr_html_()
    assert "Results of small" in html and "e2e_latency" in html
    assert len(html) < 5_000
