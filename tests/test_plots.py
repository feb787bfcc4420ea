"""pipesim.plots: every figure draws its data, takes ``ax=``, and the standard set saves as PNG."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import pipesim
from pipesim import plots
from pipesim.cli import main

SMALL = {"name": "small", "sessions": {"arrivals": {"kind": "at_once", "count": 30}},
         "kafka": {"outages": [{"start_s": 20, "end_s": 26}], "request_timeout_s": 1.0}}


@pytest.fixture(scope="module")
def res() -> pipesim.Results:
    """30 sessions at once (they queue) with a Kafka outage at 20-26 s (timeouts, failed turns)."""
    return pipesim.simulate(SMALL, seed=2, progress=False)


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


def _lane_of(collection: object) -> float:
    vertices = np.concatenate([p.vertices for p in collection.get_paths()])  # type: ignore[attr-defined]
    return float(np.round(vertices[:, 1].mean()))


def test_the_fixture_has_something_to_show(res: pipesim.Results) -> None:
    counts = res.counts()
    assert counts["kafka_timeouts"] > 0 and counts["failed"] > 0 and counts["barge_in"] > 0


def test_session_timeline_has_a_bar_lane_per_service_and_state(res: pipesim.Results) -> None:
    sid = plots.interesting_session(res)
    assert (res.incidents()["session_id"] == sid).any()
    fig = plots.session_timeline(res, sid)
    assert isinstance(fig, Figure)
    lanes, buffer = fig.axes[0], fig.axes[1]
    labels = [t.get_text() for t in lanes.get_yticklabels()]
    assert labels == ["TTS", "LLM", "STT", "pipeline", "session"]
    lanes_with_bars = {_lane_of(c) for c in lanes.collections}
    assert lanes_with_bars == {0.0, 1.0, 2.0, 3.0, 4.0}
    colours = {tuple(np.round(fc, 3)) for c in lanes.collections for fc in c.get_facecolor()}
    expected = {plots.STATE_COLOURS["executing"], plots.STATE_COLOURS["complete"],
                plots.PIPELINE_COLOURS["processing"], plots.PIPELINE_COLOURS["listening"]}
    assert {tuple(np.round(matplotlib.colors.to_rgba(c), 3)) for c in expected} <= colours
    assert buffer.lines and max(np.max(line.get_ydata()) for line in buffer.lines) > 0
    quality_axis = [a for a in fig.axes if a.get_ylabel().startswith("audio quality")]
    assert quality_axis and quality_axis[0].lines


def test_session_timeline_marks_timeouts_failures_and_barge_ins(res: pipesim.Results) -> None:
    inc = res.incidents()
    sid = inc[inc["event"] == "kafka_timeout"]["session_id"].iloc[0]
    fig = plots.session_timeline(res, sid)
    lanes = fig.axes[0]
    crosses = [line for line in lanes.lines if line.get_marker() == "X"]
    assert len(crosses) == ((inc["session_id"] == sid) & (inc["event"] == "kafka_timeout")).sum()
    vertical = [line for line in lanes.lines if line.get_linestyle() in ("--", ":")]
    others = ((inc["session_id"] == sid) & (inc["event"] != "kafka_timeout")).sum()
    assert len(vertical) == others
    zoomed = res.timeline(sid, start=10, end=40)
    assert zoomed.axes[0].get_xlim() == (10, 40)


def test_session_timeline_into_given_axes_and_unknown_session(res: pipesim.Results) -> None:
    fig, axes = plt.subplots(2, 1)
    assert plots.session_timeline(res, "sim-00001", ax=axes) is fig
    assert axes[0].collections
    fig = plots.session_timeline(res, "nobody")
    assert "no session" in fig.axes[0].texts[0].get_text()


def test_latency_cdf_draws_every_stage_with_percentile_marks(res: pipesim.Results) -> None:
    ax = plots.latency_cdf(res)
    assert isinstance(ax, Axes)
    curves = [line for line in ax.lines if len(line.get_xdata()) > 1]
    assert len(curves) == 5
    marks = [line for line in ax.lines if len(line.get_xdata()) == 1]
    assert len(marks) == 5 * 3
    e2e = res.turns["e2e_latency"].dropna() * 1000
    p95 = [m for m in marks if m.get_marker() == "s" and np.isclose(m.get_ydata()[0], 0.95)]
    assert any(np.isclose(m.get_xdata()[0], np.quantile(e2e, 0.95)) for m in p95)
    assert "ms" in ax.get_xlabel()
    again = plots.latency_cdf(res.turns, ["e2e_latency"], ax=ax, label="again", linestyle="--")
    assert again is ax and len([line for line in ax.lines if len(line.get_xdata()) > 1]) == 6


def test_histograms_mark_percentiles_in_ms(res: pipesim.Results) -> None:
    ax = plots.latency_histogram(res, "llm_stage")
    assert len(ax.patches) == 50 and sum(p.get_height() for p in ax.patches) > 0
    vlines = [line for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]]
    assert len(vlines) == 3
    assert np.isclose(vlines[0].get_xdata()[0], res.turns["llm_stage"].median() * 1000)
    assert ax.get_xlabel() == "ms"
    fig = plots.latency_histograms(res)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 6 and all(a.patches for a in visible)
    empty = plots.latency_histogram(res.turns.iloc[:0], "e2e_latency")
    assert empty.texts


def test_breakdown_bars_stack_the_parts_of_each_percentile(res: pipesim.Results) -> None:
    ax = plots.breakdown_bars(res)
    table = res.percentile_breakdown()
    tops = np.zeros(3)
    for container in ax.containers:
        tops = np.maximum(tops, [bar.get_y() + bar.get_height() for bar in container])
    assert np.allclose(tops, table["e2e_mean"] * 1000)
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["around p50", "around p95",
                                                                            "around p99"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "STT retries" in legend and "LLM to first token" in legend
    assert "ms" in ax.get_ylabel()


def test_over_time_figures(res: pipesim.Results) -> None:
    ax = plots.latency_over_time(res, window=10)
    assert len(ax.lines) == 3 and ax.patches
    ax = plots.kafka_timeouts(res, window=5)
    assert any(p.get_height() > 0 for p in ax.patches if hasattr(p, "get_height"))
    failed = {line.get_label(): line for line in ax.lines if line.get_label().startswith("failed, ")}
    assert sum(line.get_ydata().sum() for line in failed.values()) == res.counts()["failed"]
    assert sorted(failed) == sorted(f"failed, {cause}: {n}" for cause, n in res.failures().items())
    shaded = [p for p in ax.patches if p.get_label() == "Kafka stall / outage"]
    assert len(shaded) == 1
    fig = plots.over_time(res, window=5)
    assert isinstance(fig, Figure) and len(fig.axes) >= 2


def test_failures_without_kafka_timeouts_are_explained() -> None:
    """Turns failed for poor audio: the figure names that cause, not only "no Kafka timeouts"."""
    poor = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 30}},
                             "quality": {"snr_mean_db": 12, "poor_stt_failure_probability": 0.5}},
                            seed=4, progress=False)
    assert poor.counts()["kafka_timeouts"] == 0 and poor.counts()["failed"] > 0
    ax = plots.kafka_timeouts(poor, window=5)
    labels = [line.get_label() for line in ax.lines]
    n = poor.failures()["stt: low audio quality, re-prompting the user"]
    assert f"failed, stt: low audio quality, re-prompting the user: {n}" in labels
    [note] = [text.get_text() for text in ax.texts]
    assert note.startswith("no Kafka timeouts") and "turns failed for the causes in the legend" in note


def test_service_figures(res: pipesim.Results) -> None:
    ax = plots.utilisation(res, window=5)
    assert len(ax.lines) == 3
    assert all(0 <= np.max(line.get_ydata()) <= 100 for line in ax.lines)
    assert max(np.max(line.get_ydata()) for line in ax.lines) > 10
    ax = plots.queue_length(res)
    assert len(ax.lines) == 3 and max(np.max(line.get_ydata()) for line in ax.lines) > 0
    fig = plots.service_load(res, window=5)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_results_plot_accessor(res: pipesim.Results) -> None:
    assert isinstance(res.plot.cdf(), Axes)
    assert isinstance(res.plot.histogram(), Axes)
    assert isinstance(res.plot.histograms(), Figure)
    assert isinstance(res.plot.breakdown(), Axes)
    assert isinstance(res.plot.latency_over_time(), Axes)
    assert isinstance(res.plot.utilisation(), Axes)
    assert isinstance(res.plot.queue_length(), Axes)
    assert isinstance(res.plot.service_load(), Figure)
    assert isinstance(res.plot.kafka_timeouts(), Axes)
    assert isinstance(res.plot.over_time(), Figure)
    assert isinstance(res.plot.timeline(), Figure)


def test_save_standard_figures_writes_pngs_and_leaves_no_figure_open(res: pipesim.Results, tmp_path: Path) -> None:
    before = plt.get_fignums()
    paths = plots.save_standard_figures(res, tmp_path / "figs")
    assert plt.get_fignums() == before
    assert [p.name for p in paths] == ["latency_cdf.png", "latency_histograms.png", "latency_breakdown.png",
                                       "service_load.png", "over_time.png", "session_timeline.png"]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path.name


def test_save_standard_figures_of_a_run_without_incidents(tmp_path: Path) -> None:
    quiet = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 2}, "barge_in_probability": 0},
                              "services": {"stt": {"failure_probability": 0}}, "quality": {"snr_mean_db": 40}},
                             progress=False)
    assert quiet.incidents().empty
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of a legend with nothing to label
        paths = plots.save_standard_figures(quiet, tmp_path)
    assert len(paths) == 6 and all(p.stat().st_size > 5_000 for p in paths)


def test_cli_run_writes_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("name: tiny\nsessions:\n  arrivals: {kind: at_once, count: 10}\n")
    assert main(["run", str(scenario), "--plots", str(tmp_path / "plots")]) == 0
    assert "wrote 6 figures" in capsys.readouterr().out
    assert len(list((tmp_path / "plots").glob("*.png"))) == 6
