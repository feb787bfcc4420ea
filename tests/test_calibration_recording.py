"""``pipesim fit`` reads a pipesim recording: per-turn timings from the receipt times of its state updates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pipesim
from pipesim.calibration import CalibrationError, fit, read_measurements
from pipesim.cli import main as cli_main
from pipesim.live.recording import Recorder

SCENARIO = {"name": "calibrate-from-recording", "seed": 11,
            "sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 0.5, "count": 40}, "turns": 3}}


def _record(res: pipesim.Results, path: Path, speed: float) -> Path:
    """The recording a server running ``res``'s model at ``speed`` would have written."""
    rec = Recorder(path, {"scenario": SCENARIO["name"], "seed": 11, "speed": speed})
    for t, text in zip(res.messages["t"], res.messages["message"], strict=True):
        rec.write(t / speed, t, text)
    rec.close()
    return path


@pytest.fixture(scope="module")
def res() -> pipesim.Results:
    return pipesim.simulate(SCENARIO, progress=False)


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_a_recording_gives_each_turns_end_of_utterance_and_transcription_delay(
        res: pipesim.Results, speed: float, tmp_path: Path) -> None:
    measured = read_measurements(_record(res, tmp_path / "rec.jsonl", speed))
    turns = res.turns.dropna(subset=["stt_stage"])
    expected_eou = np.sort(turns["end_of_utterance_delay"].to_numpy())
    expected_transcription = np.sort((turns["end_of_utterance_delay"] + turns["stt_stage"]).to_numpy())
    assert len(turns) >= 100
    # The same turns, the same spans (to the 6 decimals a recording keeps of wall times).
    got = measured.dropna()
    np.testing.assert_allclose(np.sort(got["end_of_utterance_delay"]), expected_eou, atol=2e-5 * speed)
    np.testing.assert_allclose(np.sort(got["transcription_delay"]), expected_transcription, atol=2e-5 * speed)


def test_pipesim_fit_calibrates_the_stages_a_recording_times(res: pipesim.Results, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _record(res, tmp_path / "rec.jsonl", 1.0)
    cal = fit(path)
    assert set(cal.chosen) == {"sessions.end_of_utterance_delay_s", "services.stt.latency_s"}
    out = tmp_path / "fragment.yaml"
    assert cli_main(["fit", str(path), "--out", str(out)]) == 0
    assert out.exists()


def test_a_recording_without_a_whole_turn_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    rec = Recorder(path, {"speed": 1.0})
    rec.write(0.0, 0.0, {"type": "session_created", "session_id": "a", "timestamp": 0.0, "seq": 0})
    rec.close()
    with pytest.raises(CalibrationError, match=r"rec\.jsonl: the recording holds no complete user turn"):
        read_measurements(path)
    header = json.loads(path.read_text().splitlines()[0])
    path.write_text(json.dumps({**header, "speed": 0}) + "\n")
    with pytest.raises(CalibrationError, match=r"rec\.jsonl:1 speed: must be a number > 0, got 0"):
        read_measurements(path)
