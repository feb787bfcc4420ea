"""Calibrating from a LiveKit Agents session report written by LiveKit's own classes (livekit-agents 1.8.9,
``scripts/make_livekit_report.py``): its turn mapped onto pipesim's, and the run of the calibrated scenario
timed like the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipesim
from pipesim.calibration import STAGES, apply, fit, read_measurements, stage_values

REPORT = Path(__file__).parent / "data" / "livekit_report.jsonl"
# What scripts/make_livekit_report.py drew: transcription_delay lognormal, p50 280 ms, p95 600 ms.
STT_P50, STT_P95 = 0.28, 0.6


def report_metrics() -> pd.DataFrame:
    """Every message's metrics as LiveKit wrote them, one row per message that has any."""
    rows = [item["metrics"] for line in REPORT.read_text().splitlines()
            for item in json.loads(line)["chat_history"]["items"] if item.get("metrics")]
    return pd.DataFrame(rows)


def median_error(p50: float, p95: float, n: int) -> float:
    """The relative standard error of the median of n lognormal draws: 1.2533 sigma / sqrt(n)."""
    return 1.2533 * math.log(p95 / p50) / 1.6449 / math.sqrt(n)


def test_the_fixture_is_livekits_own_report() -> None:
    reports = [json.loads(line) for line in REPORT.read_text().splitlines()]
    assert len(reports) == 4 and {r["sdk_version"] for r in reports} == {"1.8.9"}
    assert [r["user_turns"] for r in reports] == [25] * 4
    metrics = report_metrics()
    # LiveKit decides the turn only once the final transcript is in: every turn's transcript came first.
    user = metrics.dropna(subset=["end_of_turn_delay"])
    assert len(user) == 100 and (user["transcription_delay"] <= user["end_of_turn_delay"]).all()


def test_stt_is_calibrated_from_transcription_delay_and_the_turn_adds_up() -> None:
    measured = read_measurements(REPORT)
    cal = fit(measured)
    assert cal.warnings == []
    assert cal.stages["stt"].source == "transcription_delay"
    assert cal.stages["end_of_utterance"].source == "end_of_turn_delay - transcription_delay"
    # Turn by turn, pipesim's end_of_utterance_delay + STT is LiveKit's end_of_turn_delay (its time to the LLM).
    eou, _ = stage_values(measured, STAGES[0])
    stt, _ = stage_values(measured, STAGES[1])
    np.testing.assert_allclose(eou + stt, measured["end_of_turn_delay"].dropna().to_numpy(), rtol=1e-12)
    # The fitted STT median is the report's, and the generating one, within sampling error (3 standard errors).
    fitted = cal.stages["stt"].fits[cal.stages["stt"].chosen]["frozen"].median()
    tolerance = 3 * median_error(STT_P50, STT_P95, len(stt))
    assert abs(fitted / np.median(stt) - 1) < tolerance, (fitted, np.median(stt))
    assert abs(fitted / STT_P50 - 1) < tolerance, fitted
    # Counts: 100 user turns, 100 replies, and one greeting (say(): TTS, no LLM) per session.
    assert [len(cal.stages[s].samples) for s in ("end_of_utterance", "stt", "llm", "tts")] == [100, 100, 100, 104]


@pytest.fixture(scope="module")
def calibrated_run() -> pipesim.Results:
    """The report's calibration on a base that does not saturate: 150 sessions at 1/s, 4 turns, no barge-ins."""
    base = {"name": "light", "seed": 3, "quality": {"poor_threshold": 0.0},
            "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 150}, "turns": 4,
                         "barge_in_probability": 0.0}}
    return pipesim.simulate(apply(base, fit(REPORT)), progress=False)


def test_a_run_of_the_calibrated_scenario_is_timed_like_the_report(calibrated_run: pipesim.Results) -> None:
    turns = calibrated_run.turns.dropna(subset=["e2e_latency"])
    assert len(turns) > 500 and (turns["stt_timeouts"] + turns["llm_timeouts"] + turns["tts_timeouts"]).sum() == 0
    metrics = report_metrics()
    # Simulated medians against the report's, within ~3 standard errors of the report's 100 turns (each
    # median's relative error is ~5-10%) plus the few ms of Kafka legs pipesim adds around each service.
    pairs = {"time to the LLM request": (turns["end_of_utterance_delay"] + turns["stt_stage"], "end_of_turn_delay"),
             "STT": (turns["stt_service"], "transcription_delay"), "LLM": (turns["ttft"], "llm_node_ttft"),
             "TTS": (turns["ttfb"], "tts_node_ttfb")}
    for what, (simulated, column) in pairs.items():
        ratio = simulated.median() / metrics[column].median()
        assert abs(ratio - 1) < 0.2, (what, simulated.median(), metrics[column].median())
