"""Every figure draws tiny and empty runs: no sessions, a run cut after 0.01 s or 1 s, no complete turn,
no Kafka timeout, one session. A figure with nothing to show says so on its axes."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

import pipesim
from pipesim import plots
from pipesim.cli import main

RUNS: dict[str, tuple[Any, float | None]] = {
    "no sessions": ({"sessions": {"arrivals": {"kind": "at_once", "count": 0}}}, None),
    "until 0.01 s": ("baseline", 0.01),
    "until 1 s": ("frontend_demo", 1.0),
    "no complete turn": ({"sessions": {"arrivals": {"kind": "at_once", "count": 3}},
                          "services": {"stt": {"failure_probability": 1.0}}}, 20.0),
    "no Kafka timeout": ({"sessions": {"arrivals": {"kind": "at_once", "count": 2}, "turns": 1}}, None),
    "one session": ({"sessions": {"arrivals": {"kind": "at_once", "count": 1}}}, None),
}
FIGURES: dict[str, Callable[[pipesim.Results], Any]] = {
    "latency_cdf": plots.latency_cdf,
    "latency_histogram": plots.latency_histogram,
    "latency_histograms": plots.latency_histograms,
    "breakdown_bars": plots.breakdown_bars,
    "latency_over_time": plots.latency_over_time,
    "utilisation": plots.utilisation,
    "queue_length": plots.queue_length,
    "service_load": plots.service_load,
    "kafka_timeouts": plots.kafka_timeouts,
    "over_time": plots.over_time,
    "session_timeline": plots.session_timeline,
    "shade_kafka_windows": lambda res: plots.shade_kafka_windows(plt.subplots()[1], res),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, pipesim.Results]:
    return {name: pipesim.simulate(scn, until=until, progress=False) for name, (scn, until) in RUNS.items()}


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


def test_the_runs_are_what_their_names_say(runs):
    assert len(runs["no sessions"].sessions) == 0 and runs["no sessions"].events.empty
    assert runs["until 0.01 s"].turns.empty and runs["until 1 s"].turns.empty
    assert len(runs["no complete turn"].turns) > 0 and runs["no complete turn"].turns["e2e_latency"].isna().all()
    assert runs["no Kafka timeout"].counts()["kafka_timeouts"] == 0
    assert len(runs["one session"].sessions) == 1


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("figure", FIGURES)
def test_every_figure_draws_tiny_and_empty_runs(runs, run, figure):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "singular limits" and the like either
        drawn = FIGURES[figure](runs[run])
        fig = drawn if isinstance(drawn, Figure) else drawn.figure
        fig.canvas.draw()
    if run == "no sessions" and figure != "shade_kafka_windows":
        texts = [t.get_text() for a in fig.axes for t in a.texts]
        assert any(t.startswith("no ") for t in texts), texts


@pytest.mark.parametrize("run", RUNS)
def test_the_standard_figures_save_for_tiny_and_empty_runs(runs, run, tmp_path):
    written = plots.save_standard_figures(runs[run], tmp_path)
    assert [p.stem for p in written] == ["latency_cdf", "latency_histograms", "latency_breakdown", "service_load",
                                         "over_time", "session_timeline"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_run_with_plots_of_a_one_second_run(tmp_path, capsys):
    assert main(["run", "frontend_demo", "--until", "1", "--plots", str(tmp_path)]) == 0
    assert "wrote 6 figures" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.png"))) == 6
