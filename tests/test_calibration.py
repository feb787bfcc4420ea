"""Calibration (``pipesim fit``): parameters known to a simulation come back out of its turns; the KS
rule picks the family the data came from; bad measurement files get one line naming file, line, column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipesim
from pipesim.calibration import MIN_SAMPLES, CalibrationError, apply, capacity_warnings, fit, read_measurements
from pipesim.cli import main as cli_main
from pipesim.scenario import bundled_scenarios, load_scenario
from pipesim.theory import single_stage_scenario

LOGNORMAL_TTFT = {"kind": "lognormal", "p50": 0.3, "p95": 0.7}
GAMMA_STT = {"kind": "gamma", "mean": 0.25, "cv": 0.4}
GAMMA_TTFB = {"kind": "gamma", "mean": 0.2, "cv": 0.3}


def known_scenario(kafka_latency: object = 0) -> dict[str, object]:
    """2,500 turns whose measured columns are the services' own draws: no queueing (1,000 workers), no
    poor-audio slowdown, no failures; Kafka as given (its legs are in ``ttft`` and ``ttfb``)."""
    return {
        "name": "known", "seed": 7,
        "sessions": {"arrivals": {"kind": "at_once", "count": 500}, "turns": 5, "max_repeats": 0},
        "quality": {"poor_threshold": 0.0},
        "kafka": {"latency_s": kafka_latency},
        "services": {"stt": {"capacity": 1000, "latency_s": GAMMA_STT},
                     "llm": {"capacity": 1000, "ttft_s": LOGNORMAL_TTFT},
                     "tts": {"capacity": 1000, "ttfb_s": GAMMA_TTFB}},
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The turns of a run with known parameters, exported as a measurements CSV (as ``run --csv`` does)."""
    res = pipesim.simulate(known_scenario(), progress=False)
    path = tmp_path_factory.mktemp("measured") / "turns.csv"
    res.turns.to_csv(path, index=False)
    return path


# Tolerances. With n = 2,500 turns, a maximum-likelihood estimate's relative standard error is about
# sigma / sqrt(n) = 1.0% for the lognormal's p50 (sigma = ln(0.7 / 0.3) / 1.645 = 0.515), 1.6% for its p95,
# cv / sqrt(n) = 0.8% for a gamma's mean (cv 0.4) and ~1.1% for its cv. 5% (p50, mean) and 8% (p95, cv) are
# at least 5 standard errors: a failure is a bias in the fit or the export, not bad luck.
def close(fitted: float, true: float, tolerance: float) -> bool:
    return abs(fitted / true - 1) <= tolerance


def check_recovered(chosen: dict[str, dict[str, object]]) -> None:
    ttft, stt, ttfb = (chosen["services.llm.ttft_s"], chosen["services.stt.latency_s"],
                       chosen["services.tts.ttfb_s"])
    assert ttft["kind"] == "lognormal" and stt["kind"] == "gamma" and ttfb["kind"] == "gamma", chosen
    assert close(ttft["p50"], 0.3, 0.05) and close(ttft["p95"], 0.7, 0.08), ttft
    assert close(stt["mean"], 0.25, 0.05) and close(stt["cv"], 0.4, 0.08), stt
    assert close(ttfb["mean"], 0.2, 0.05) and close(ttfb["cv"], 0.3, 0.08), ttfb


def test_round_trip_recovers_the_simulated_parameters(measured: Path, tmp_path: Path) -> None:
    cal = fit(measured)
    check_recovered(cal.chosen)
    table = cal.table
    assert set(table["stage"]) == {"end_of_utterance", "stt", "llm", "tts"}
    assert (table["n"] == 2500).all()
    chosen = table[table["chosen"]]
    assert len(chosen) == 4 and (chosen["p_value"] > 0.01).all() and (chosen["ks_statistic"] < 0.03).all()
    # The file is a whole scenario that `pipesim run` takes: the fitted fields on baseline's sessions and
    # capacities (not pipesim's defaults, 100 sessions arriving at once).
    fragment = cal.save(tmp_path / "fragment.yaml")
    loaded = load_scenario(fragment)
    assert loaded.services.llm.ttft_s.model_dump() == cal.chosen["services.llm.ttft_s"]
    baseline = load_scenario("baseline")
    assert loaded.sessions.arrivals == baseline.sessions.arrivals and loaded.services.llm.capacity == 12
    assert loaded.override({"name": "baseline", "description": baseline.description}) == apply("baseline", cal)
    assert cli_main(["run", str(fragment), "--until", "5"]) == 0
    # apply() calibrates any scenario, leaving its other fields alone.
    calibrated = apply("baseline", cal)
    assert calibrated.services.stt.latency_s.model_dump() == cal.chosen["services.stt.latency_s"]
    assert calibrated.services.llm.capacity == load_scenario("baseline").services.llm.capacity


def test_kafka_legs_in_ttft_and_ttfb_are_subtracted() -> None:
    """With Kafka's default latency inside the measured ``ttft`` and ``ttfb``, the ``*_kafka`` columns of the
    same rows are taken off, and the services' own parameters still come back."""
    res = pipesim.simulate(known_scenario(kafka_latency={"kind": "lognormal", "p50": 0.02, "p95": 0.08}),
                           progress=False)
    turns = res.turns[["end_of_utterance_delay", "stt_service", "ttft", "llm_kafka", "llm_queue", "llm_retry",
                       "ttfb", "tts_kafka", "tts_queue", "tts_retry"]]
    assert turns["llm_kafka"].mean() > 0.02
    cal = fit(turns)
    assert cal.stages["llm"].source == "ttft - llm_kafka - llm_queue - llm_retry"
    assert cal.stages["tts"].source == "ttfb - tts_kafka - tts_queue - tts_retry"
    check_recovered(cal.chosen)


@pytest.mark.parametrize("seed", range(10))
def test_ks_picks_the_family_the_data_came_from(seed: int) -> None:
    """1,000 draws with a coefficient of variation of ~0.5, where lognormal and gamma differ most in the
    tails: the smallest KS statistic is the true family's (the two KS statistics differ by ~0.03, several
    times their sampling noise at n = 1,000)."""
    rng = np.random.default_rng(seed)
    lognormal = rng.lognormal(math.log(0.3), math.log(0.7 / 0.3) / 1.6449, 1000)
    gamma = rng.gamma(4.0, 0.25 / 4.0, 1000)
    families = ["lognormal", "gamma"]
    assert fit(pd.DataFrame({"ttft": lognormal}), families).chosen["services.llm.ttft_s"]["kind"] == "lognormal"
    assert fit(pd.DataFrame({"ttft": gamma}), families).chosen["services.llm.ttft_s"]["kind"] == "gamma"


def test_empirical_kept_when_the_ks_test_rejects_every_family(tmp_path: Path) -> None:
    """A two-mode TTS (cache hits and misses) fits neither family: the samples are kept; many samples go to
    a CSV beside the fragment, which still loads."""
    rng = np.random.default_rng(3)
    ttfb = np.concatenate([rng.normal(0.1, 0.01, 5000), rng.normal(0.4, 0.02, 1000)]).clip(0.01)
    cal = fit(pd.DataFrame({"ttfb": ttfb}))
    assert cal.stages["tts"].chosen == "empirical"
    path = cal.save(tmp_path / "two_modes.yaml")
    assert (tmp_path / "two_modes.samples.csv").exists()
    samples = load_scenario(path).services.tts.ttfb_s.samples
    assert len(samples) == 6000 and sorted(samples) == sorted(cal.chosen["services.tts.ttfb_s"]["samples"])


def test_transcription_delay_is_taken_after_the_end_of_the_turn() -> None:
    """pipesim's STT starts when the turn ends: transcription_delay - end_of_utterance_delay; a transcript
    ready before the turn ended (0 after the difference) leaves only the samples."""
    eou = np.full(40, 0.3)
    frame = pd.DataFrame({"end_of_utterance_delay": eou, "transcription_delay": eou + np.linspace(0, 0.2, 40)})
    cal = fit(frame)
    assert cal.stages["stt"].source == "transcription_delay - end_of_utterance_delay"
    assert cal.stages["stt"].chosen == "empirical"  # one value is 0: no lognormal or gamma
    assert cal.stages["stt"].samples.min() == 0 and math.isclose(cal.stages["stt"].samples.max(), 0.2)
    assert cal.warnings == []  # one 0 in 40: not a different turn
    with pytest.raises(CalibrationError, match="transcription_delay: needs end_of_turn_delay or end_of_utterance_"):
        fit(frame.drop(columns=["end_of_utterance_delay"]))


def livekit_report(n: int) -> dict[str, object]:
    """The shape of LiveKit Agents' ``SessionReport.to_dict()``: per-message metrics in the chat history."""
    rng = np.random.default_rng(5)
    items: list[dict[str, object]] = [{"type": "message", "role": "system", "content": ["be brief"]}]
    for i in range(n):
        items.append({"type": "message", "role": "user", "content": [f"question {i}"],
                      "metrics": {"end_of_turn_delay": 0.5 + 0.1 * rng.random(),
                                  "transcription_delay": 0.1 * rng.random()}})
        items.append({"type": "message", "role": "assistant", "content": [f"answer {i}"],
                      "metrics": {"llm_node_ttft": float(rng.lognormal(-1, 0.4)),
                                  "tts_node_ttfb": float(rng.gamma(5, 0.04)), "e2e_latency": 1.2}})
    return {"job_id": "j", "room_id": "r", "room": "room", "events": [], "chat_history": {"items": items}}


def test_livekit_session_reports_are_read(tmp_path: Path) -> None:
    one = tmp_path / "report.json"
    one.write_text(json.dumps(livekit_report(40)))
    frame = read_measurements(one)
    assert frame["ttft"].count() == 40 and frame["ttfb"].count() == 40
    assert frame["end_of_turn_delay"].count() == 40
    cal = fit(one)
    assert set(cal.stages) == {"end_of_utterance", "stt", "llm", "tts"}
    # LiveKit's transcript comes before the end of the turn: STT is transcription_delay, the rest of
    # end_of_turn_delay is the wait after it (tests/test_calibration_livekit.py: a report LiveKit wrote).
    np.testing.assert_array_equal(np.sort(cal.stages["stt"].samples), np.sort(frame["transcription_delay"].dropna()))
    many = tmp_path / "reports.jsonl"
    many.write_text(json.dumps(livekit_report(20)) + "\n" + json.dumps(livekit_report(20)) + "\n")
    assert read_measurements(many)["ttft"].count() == 40
    many.write_text(json.dumps(livekit_report(20)) + "\n{oops\n")
    with pytest.raises(CalibrationError, match=r"reports\.jsonl:2: invalid JSON"):
        read_measurements(many)
    bad = livekit_report(1)
    bad["chat_history"]["items"][2]["metrics"]["llm_node_ttft"] = "fast"  # type: ignore[index]
    one.write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match=r"report\.json:1 chat_history\.items\[2\]\.metrics\.llm_node_ttft: "
                                               r"not a number"):
        read_measurements(one)


def good_rows(n: int = MIN_SAMPLES) -> list[str]:
    return [f"{i},{0.2 + i / 1000:.3f}" for i in range(n)]


def write(tmp_path: Path, lines: list[str], name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@settings(max_examples=60, deadline=None)
@given(cell=st.one_of(
    st.text(min_size=1, max_size=8).filter(lambda s: _not_a_duration(s)),
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["inf", "-inf", "1e999"]),
), row=st.integers(0, MIN_SAMPLES - 1))
def test_any_bad_cell_is_one_line_naming_file_line_and_column(tmp_path_factory: pytest.TempPathFactory,
                                                               cell: str, row: int) -> None:
    lines = ["turn,ttft", *good_rows()]
    lines[row + 1] = f'{row},"{cell.replace(chr(34), chr(34) * 2)}"'
    path = write(tmp_path_factory.mktemp("bad"), lines)
    with pytest.raises(CalibrationError) as err:
        fit(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{row + 2} ttft: "), message
    assert "\n" not in message


def _not_a_duration(text: str) -> bool:
    stripped = text.strip().lower()
    if stripped in ("", "nan", "null", "none") or "\n" in text or "\r" in text:
        return False  # missing values, and cells that would span lines
    try:
        value = float(text)
    except ValueError:
        return True
    return not (math.isfinite(value) and value >= 0) and not math.isnan(value)


def test_bad_files_get_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    few = write(tmp_path, ["turn,ttft", *good_rows(MIN_SAMPLES - 1)])
    with pytest.raises(CalibrationError, match=rf"m\.csv ttft: {MIN_SAMPLES - 1} values, at least {MIN_SAMPLES}"):
        fit(few)
    none = write(tmp_path, ["turn,latency", "1,0.2"], "none.csv")
    with pytest.raises(CalibrationError, match=r"none\.csv:1: not a CSV of per-turn measurements: no column to "
                                               r"calibrate from \(expected at least one of: end_of_utterance_delay, "
                                               r"end_of_turn_delay, transcription_delay, stt_service"):
        fit(none)
    with pytest.raises(CalibrationError, match="families: unknown 'weibull'"):
        fit(write(tmp_path, ["turn,ttft", *good_rows()], "good.csv"), families=["lognormal", "weibull"])
    (tmp_path / "bytes.csv").write_bytes(b"ttft\n0.2\n\xff\n")
    with pytest.raises(CalibrationError, match=r"bytes\.csv:3: not UTF-8"):
        fit(tmp_path / "bytes.csv")
    # The command line prints each as one line, exit 2, no traceback.
    assert cli_main(["fit", str(few)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pipesim: error: ") and "Traceback" not in err
    assert cli_main(["fit", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: cannot read" in capsys.readouterr().err


def test_cli_writes_fragment_and_qq_plots(measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plots = tmp_path / "out" / "fit.yaml", tmp_path / "plots"
    assert cli_main(["fit", str(measured), "--out", str(out), "--plots", str(plots),
                     "--families", "lognormal,gamma"]) == 0
    printed = capsys.readouterr().out
    assert "p50=" in printed and " ms" in printed and "ks_statistic" in printed
    assert load_scenario(out).name == "fit"
    assert (plots / "qq.png").stat().st_size > 10_000


@settings(max_examples=40, deadline=None)
@given(n=st.integers(MIN_SAMPLES, 80), share=st.floats(0.0, 1.0), direct=st.booleans())
def test_a_stage_whose_values_are_mostly_0_or_less_is_warned_of(n: int, share: float, direct: bool) -> None:
    """Whatever the columns: more than half the values <= 0 (a transcript before the end of the turn, or a
    measured 0) is one warning line naming the stage and the columns; half or fewer, none."""
    low = round(share * n)
    gap = np.r_[np.linspace(-0.2, 0.0, low), np.linspace(0.05, 0.3, n - low)]
    eou = np.full(n, 0.5)
    frame = (pd.DataFrame({"ttft": np.r_[np.zeros(low), np.linspace(0.2, 0.6, n - low)]}) if direct else
             pd.DataFrame({"end_of_utterance_delay": eou, "transcription_delay": (eou + gap).clip(0)}))
    cal = fit(frame)
    if low > n / 2:
        (warning,) = cal.warnings
        columns = "ttft" if direct else "transcription_delay - end_of_utterance_delay"
        assert warning.startswith(f"{'llm' if direct else 'stt'}: {low} of {n} values of {columns} are 0 or less")
        assert "\n" not in warning and (direct or "end_of_turn_delay" in warning)
    else:
        assert cal.warnings == []


def test_fit_from_the_command_line_warns_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eou = np.full(40, 0.6)
    path = tmp_path / "streamed.csv"
    pd.DataFrame({"end_of_utterance_delay": eou, "transcription_delay": eou - np.linspace(0.1, 0.4, 40)}).to_csv(path)
    assert cli_main(["fit", str(path)]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("pipesim: warning: stt: 40 of 40 values of transcription_delay - end_of_utterance_delay")


CALIBRATED = {"sessions.end_of_utterance_delay_s": {"kind": "gamma", "mean": 0.46, "cv": 0.35},
              "services.stt.latency_s": {"kind": "lognormal", "p50": 0.18, "p95": 0.42},
              "services.llm.ttft_s": {"kind": "gamma", "mean": 0.56, "cv": 0.6}}


def test_the_capacity_warning_names_the_service_its_utilisation_and_a_capacity_that_holds() -> None:
    """The README's walkthrough: measurements_example's latencies on baseline's capacities. The LLM holds a
    worker ~1 s a turn (0.56 s to the first token, ~29 more tokens at 15 ms), 10 turns/s reach it: 10 busy
    workers of 12, and by Erlang C 1% of requests wait ~1.9 s, more than the 1.44 s the 2 s Kafka timeout
    leaves after the first token. 13 workers hold; the warning says so, and with 13 it is silent."""
    scenario = load_scenario("baseline").override(CALIBRATED)
    (warning,) = capacity_warnings(scenario)
    assert warning.startswith("llm: 2 sessions/s x 5 turns: 10 turns/s x 1 s of worker time on capacity 12: "
                              "utilisation 83%, 99% of waits for a worker up to 1.9"), warning
    assert warning.endswith("services.llm.capacity: 13 holds")
    assert capacity_warnings(scenario.override({"services.llm.capacity": 13})) == []
    assert capacity_warnings("baseline") == []


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.2, 5.0), stt=st.floats(0.05, 1.5), capacity=st.integers(1, 20))
def test_the_capacity_named_silences_the_warning(rate: float, stt: float, capacity: int) -> None:
    """For Poisson sessions, any rate and STT time: a warning names a capacity with which there is none,
    and one below it would still warn (it is the least)."""
    scenario = load_scenario("baseline").override({
        "sessions.arrivals": {"kind": "poisson", "rate_per_s": rate, "count": 100},
        "services.stt.latency_s": {"kind": "constant", "value": stt}, "services.stt.capacity": capacity})
    warning = next((w for w in capacity_warnings(scenario) if w.startswith("stt:")), None)
    if warning is None:
        return
    holds = int(warning.rsplit("services.stt.capacity: ", 1)[1].split()[0])
    assert holds > capacity
    assert not any(w.startswith("stt:") for w in capacity_warnings(scenario.override({"services.stt.capacity": holds})))
    assert any(w.startswith("stt:") for w in capacity_warnings(scenario.override({"services.stt.capacity": holds - 1})))


def test_sessions_starting_at_once_are_checked_on_their_first_turns() -> None:
    """pipesim's defaults (100 sessions at once) run without a Kafka timeout and get no warning; with the
    walkthrough's LLM they collapse (the issue's 5,248 timeouts), the warning says so, and the capacity it
    names runs clean."""
    assert capacity_warnings({}) == []
    at_once = pipesim.Scenario().override(CALIBRATED)
    (warning,) = capacity_warnings(at_once)
    assert warning.startswith("llm: 100 sessions start at once: 100 first turns x 1 s of worker time on capacity 12")
    holds = int(warning.rsplit("services.llm.capacity: ", 1)[1].split()[0])
    collapsed = pipesim.simulate(at_once, progress=False).turns
    held = pipesim.simulate(at_once.override({"services.llm.capacity": holds}), progress=False).turns
    assert collapsed["llm_timeouts"].sum() > 1000 and held["llm_timeouts"].sum() < 20


def test_fit_names_what_it_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bundled measurements by name; a scenario file, or a bad --base, is one line saying what it is not."""
    out = tmp_path / "cal.yaml"
    assert cli_main(["fit", "measurements_example", "--out", str(out), "--base", "barge_in"]) == 0
    captured = capsys.readouterr()
    assert "on barge_in's sessions and capacities" in captured.out and captured.err == ""
    assert load_scenario(out).sessions.barge_in_probability == load_scenario("barge_in").sessions.barge_in_probability
    for argv, expected in ((["fit", str(out)], f"{out}: a scenario file, not measurements: pipesim fit reads"),
                           (["fit", "measurement_example"], "no bundled measurements of that name (bundled: "
                                                            "measurements_example)"),
                           (["fit", "measurements_example", "--base", "nosuch"], "--base nosuch: nosuch: no such")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("base", [*bundled_scenarios(), "single_stage"])
def test_the_written_scenario_is_its_base_with_the_fitted_fields(base: str, tmp_path: Path) -> None:
    """Whatever the base (every bundled scenario; one with a None where the default is not), the file
    `fit` writes loads as ``apply(base, fit)``: only what differs from the defaults is written, and nothing
    is lost."""
    scenario = single_stage_scenario(2.0, 0.2, 2, 10) if base == "single_stage" else base
    cal = fit(pd.DataFrame({"ttft": np.linspace(0.1, 0.5, 40), "stt_service": np.linspace(0.1, 0.3, 40)}))
    loaded = load_scenario(cal.save(tmp_path / "cal.yaml", base=scenario))
    expected = apply(scenario, cal)
    assert loaded.model_copy(update={"name": expected.name, "description": expected.description}) == expected
