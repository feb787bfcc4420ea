"""Matplotlib figures of a run: where the time goes, how busy the services are, what one session did.

Every function returns a matplotlib ``Axes`` (or a ``Figure`` when it draws several panels), takes an
optional ``ax=`` to draw into axes you made, shows inline in Jupyter and saves with ``savefig``. Latencies
are drawn in milliseconds; times of the run in seconds since its start. Functions that plot turns take
a :class:`~pipesim.Results` or a turns DataFrame (e.g. from Parquet, or :func:`pipesim.analysis.combine`).

>>> import pipesim
>>> from pipesim import plots
>>> res = pipesim.simulate("baseline", progress=False)   # doctest: +SKIP
>>> plots.breakdown_bars(res)                            # doctest: +SKIP
>>> plots.save_standard_figures(res, "out/figures")      # doctest: +SKIP

Results offer the same figures as ``res.plot.cdf()``, ``res.plot.timeline("sim-00001")`` and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from pipesim import analysis
from pipesim.vocabulary import SERVICES

if TYPE_CHECKING:
    from pipesim.analysis import Run

MS = 1000.0
#: One colour per service, used by every figure.
SERVICE_COLOURS = {"stt": "#2563eb", "llm": "#ea580c", "tts": "#16a34a"}
#: Colours of the states of a service lane and of the pipeline lane (as on the seed's dashboard).
STATE_COLOURS = {"idle": "#e5e7eb", "waiting": "#fbbf24", "executing": "#3b82f6", "complete": "#22c55e"}
PIPELINE_COLOURS = {"listening": "#c4b5fd", "processing": "#fb923c", "complete": "#22c55e"}
STATUS_COLOURS = {"created": "#e5e7eb", "active": "#99f6e4", "paused": "#9ca3af", "stopped": "#4b5563"}
LABELS = {
    "end_of_utterance_delay": "end of utterance", "stt_stage": "STT", "llm_stage": "LLM (to first phrase)",
    "tts_stage": "TTS (to first audio)", "ttft": "LLM time to first token", "ttfb": "TTS time to first byte",
    "transcription_delay": "end of speech to transcript", "e2e_latency": "voice-to-voice",
}
PART_STYLE: dict[str, tuple[str, str, str | None]] = {  # part: (label, colour, hatch)
    "end_of_utterance_delay": ("end of utterance", "#9ca3af", None),
    "stt_kafka": ("STT Kafka", "#bfdbfe", None),
    "stt_queue": ("STT queue", "#60a5fa", "//"),
    "stt_service": ("STT service", "#1d4ed8", None),
    "stt_retry": ("STT retries", "#1e3a8a", "xx"),
    "llm_kafka": ("LLM Kafka", "#fed7aa", None),
    "llm_queue": ("LLM queue", "#fb923c", "//"),
    "llm_first_token": ("LLM to first token", "#c2410c", None),
    "llm_first_phrase": ("LLM first phrase", "#7c2d12", None),
    "llm_retry": ("LLM retries", "#431407", "xx"),
    "tts_kafka": ("TTS Kafka", "#bbf7d0", None),
    "tts_queue": ("TTS queue", "#4ade80", "//"),
    "tts_service": ("TTS service", "#15803d", None),
    "tts_retry": ("TTS retries", "#14532d", "xx"),
}
_QUANTILE_MARKS = ((0.5, "o"), (0.95, "s"), (0.99, "D"))
_CDF_COLUMNS = (*analysis.STAGES, "e2e_latency")
_HIST_COLUMNS = (*analysis.STAGES, "ttft", "e2e_latency")


# Helpers ------------------------------------------------------------------------------------------------
def _turns(data: Run | pd.DataFrame) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else data.turns


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 4.5), pyplot: bool = True,
              **kw: Any) -> tuple[Figure, Any]:
    """New axes: through pyplot (shown inline in Jupyter) or as a bare Figure (saved, never registered)."""
    if pyplot:
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kw)
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kw)


def _axes(ax: Axes | None, figsize: tuple[float, float] = (8, 4.5)) -> Axes:
    if ax is not None:
        return ax
    return subplots(figsize=figsize)[1]


def _ms_axis(axis: Any) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def _empty(ax: Axes, text: str, title: str | None = None) -> Axes:
    """Axes with nothing to draw say so (a tiny or empty run), under the figure's usual title."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#6b7280")
    if title:
        ax.set_title(title)
    return ax


def _no_turns(turns: pd.DataFrame, instead: str) -> str:
    return "no turns" if turns.empty else instead


def _windows(data: Any) -> pd.DataFrame:
    """Kafka windows of a Results, merged across topics: one row per (start, end) with its topics."""
    windows = getattr(data, "kafka_windows", None)
    if windows is None or windows.empty:
        return pd.DataFrame(columns=["start", "end", "topics", "cause"])
    return (windows.groupby(["start", "end"], sort=True)
            .agg(topics=("topic", lambda s: ", ".join(sorted(set(s)))), cause=("cause", "first"))
            .reset_index())


def shade_kafka_windows(ax: Axes, results: Run | pd.DataFrame, label: bool = True, alpha: float = 0.15,
                        zorder: float = 0.5) -> Axes:
    """Shade every Kafka stall or outage of ``results`` (``Results.kafka_windows``) on a time axis.

    >>> ax = plots.latency_over_time(res, window=10)          # doctest: +SKIP
    >>> plots.shade_kafka_windows(ax, res)                    # doctest: +SKIP
    """
    windows = _windows(results) if not isinstance(results, pd.DataFrame) else results
    for i, row in enumerate(windows.itertuples(index=False)):
        ax.axvspan(row.start, row.end, color="#ef4444", alpha=alpha, lw=0, zorder=zorder,
                   label="Kafka stall / outage" if label and i == 0 else None)
    return ax


# Latency distributions --------------------------------------------------------------------------------
def latency_cdf(data: Run | pd.DataFrame, columns: Sequence[str] = _CDF_COLUMNS, ax: Axes | None = None,
                label: str | None = None, linestyle: str = "-") -> Axes:
    """Cumulative distribution of each stage and of voice-to-voice latency (ms, log scale), with p50, p95
    and p99 marked on every curve (circle, square, diamond).

    The y axis is on a logit scale so that the tail (p90, p99, p99.9) is as readable as the median. To
    compare runs, draw them into the same axes with a ``label`` and a ``linestyle``.

    >>> ax = plots.latency_cdf(res)                                              # doctest: +SKIP
    >>> plots.latency_cdf(other, ["e2e_latency"], ax=ax, label="4 workers", linestyle="--")  # doctest: +SKIP
    """
    turns = _turns(data)
    ax = _axes(ax)
    drawn = 0
    for i, column in enumerate(c for c in columns if c in turns):
        values = np.sort(turns[column].dropna().to_numpy()) * MS
        values = values[values > 0]
        if len(values) == 0:
            continue
        y = (np.arange(len(values)) + 0.5) / len(values)
        colour = SERVICE_COLOURS.get(column[:3], "#111827" if column == "e2e_latency" else f"C{i + 4}")
        if column == "end_of_utterance_delay":
            colour = "#6b7280"
        name = LABELS.get(column, column) + (f" ({label})" if label else "")
        (line,) = ax.plot(values, y, color=colour, lw=2.2 if column == "e2e_latency" else 1.5,
                          linestyle=linestyle, label=name)
        for q, marker in _QUANTILE_MARKS:
            ax.plot(np.quantile(values, q), q, marker=marker, color=line.get_color(), ms=5, linestyle="none")
        drawn += 1
    if not drawn:
        return _empty(ax, _no_turns(turns, "no turn reached the bot's first audio"), "Latency distribution per stage")
    ax.set_xscale("log")
    ax.set_yscale("logit")
    ticks = [0.1, 0.5, 0.9, 0.95, 0.99, 0.999]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"p{v * 100:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}" if str(round(v))[0] in "25" else ""))
    ax.set_ylim(0.05, 0.9995)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of turns at or below")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker=m, color="#374151", linestyle="none", ms=5) for _, m in _QUANTILE_MARKS]
    labels += ["p50", "p95", "p99"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title("Latency distribution per stage")
    return ax


def latency_histogram(data: Run | pd.DataFrame, column: str = "e2e_latency", ax: Axes | None = None,
                      bins: int = 50) -> Axes:
    """Histogram of one latency column (ms) with its p50, p95 and p99 as labelled vertical lines.

    The x axis ends at the p99.9 so the body stays readable; the title says how many turns lie beyond.

    >>> plots.latency_histogram(res, "llm_stage")   # doctest: +SKIP
    """
    turns = _turns(data)
    ax = _axes(ax, (6, 3.5))
    values = turns[column].dropna().to_numpy() * MS if column in turns else np.array([])
    title = LABELS.get(column, column)
    if len(values) == 0:
        return _empty(ax, _no_turns(turns, "no turn got this far"), title)
    top = float(np.quantile(values, 0.999))
    top = top if top > values.min() else float(values.max()) + 1
    beyond = int((values > top).sum())
    ax.hist(values, bins=bins, range=(max(0.0, float(values.min()) * 0.9), top), color="#93c5fd",
            edgecolor="#1d4ed8", lw=0.4)
    for q, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
        v = float(np.quantile(values, q))
        ax.axvline(v, color="#111827", linestyle=style, lw=1.2, label=f"p{q * 100:g} {v:,.0f} ms")
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_title(title + (f"  (+{beyond} beyond)" if beyond else ""), fontsize=10)
    ax.set_xlabel("ms")
    ax.set_ylabel("turns")
    _ms_axis(ax.xaxis)
    return ax


def latency_histograms(data: Run | pd.DataFrame, columns: Sequence[str] = _HIST_COLUMNS,
                       ax: Sequence[Axes] | None = None, bins: int = 50) -> Figure:
    """One :func:`latency_histogram` per column (default: the four stages, LLM TTFT, voice-to-voice).

    >>> fig = plots.latency_histograms(res)   # doctest: +SKIP
    """
    columns = list(columns)
    if ax is None:
        ncols = min(3, len(columns))
        nrows = -(-len(columns) // ncols)
        fig, grid = subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(columns):]:
            extra.set_visible(False)
    else:
        axes = list(ax)
        fig = axes[0].figure
    for column, a in zip(columns, axes, strict=False):
        latency_histogram(data, column, ax=a, bins=bins)
    return fig


def breakdown_bars(data: Run | pd.DataFrame, quantiles: Sequence[float] = (0.5, 0.95, 0.99),
                   ax: Axes | None = None, band: float = 0.025, legend: bool = True) -> Axes:
    """Stacked bars: what the turns at p50, p95 and p99 of voice-to-voice latency spent their time on (ms).

    Percentiles of the parts do not add up, so each bar is the *mean composition of the turns around that
    percentile* (see :func:`pipesim.analysis.percentile_breakdown`: for p95, the turns between p92.5 and
    p97.5 of e2e latency). The bar's height is their mean latency; the black tick marks the percentile
    itself. Parts that are zero in every bar (e.g. retries in a healthy run) are left out of the legend.

    >>> plots.breakdown_bars(res)   # doctest: +SKIP
    """
    ax = _axes(ax, (8, 5))
    turns = _turns(data)
    table = analysis.percentile_breakdown(turns, quantiles, band)
    if table["turns"].sum() == 0:
        return _empty(ax, _no_turns(turns, "no turn reached the bot's first audio"),
                      "Where the time goes: voice-to-voice latency by part")
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for part in analysis.PARTS:
        values = table[part].fillna(0).to_numpy() * MS
        label, colour, hatch = PART_STYLE[part]
        show = bool((values > 0.5).any())
        ax.bar(x, values, bottom=bottom, width=0.6, color=colour, hatch=hatch, edgecolor="white", lw=0.5,
               label=label if show else None)
        bottom += values
    for xi, (name, row) in zip(x, table.iterrows(), strict=True):
        q = row["e2e_quantile"] * MS
        ax.plot([xi - 0.34, xi + 0.34], [q, q], color="#111827", lw=2)
        ax.text(xi, max(q, bottom[xi]) * 1.01, f"{name} = {q:,.0f} ms", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [f"around {name}\n({int(row['turns'])} turns)" for name, row in table.iterrows()])
    ax.set_ylabel("mean latency of the turns (ms)")
    # Room for the labels; never cut bars drawn before on shared axes (sharey=True, a second run).
    ax.set_ylim(0, max(ax.get_ylim()[1], bottom.max() * 1.12))
    _ms_axis(ax.yaxis)
    ax.set_title("Where the time goes: voice-to-voice latency by part")
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
                  frameon=False, title="part (top to bottom)", title_fontsize=8)
    return ax


def latency_over_time(data: Run | pd.DataFrame, window: float = 10.0, ax: Axes | None = None,
                      column: str = "e2e_latency", shade: bool = True) -> Axes:
    """p50, p95 and p99 of ``column`` (ms) per ``window`` seconds of the run (by the turn's end of
    utterance), with the number of turns per window in grey and Kafka stalls shaded (if Results).

    >>> plots.latency_over_time(res, window=10)   # doctest: +SKIP
    """
    ax = _axes(ax, (10, 4))
    table = analysis.latency_over_time(_turns(data), window, column)
    table = table[table["count"] > 0]  # windows whose turns all ended before this figure (e.g. failed)
    if table.empty:
        return _empty(ax, _no_turns(_turns(data), "no turn got this far"),
                      f"{LABELS.get(column, column)} latency over time ({window:g} s windows)")
    centre = table.index.to_numpy(float) + window / 2
    for stat, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax.plot(centre, table[stat] * MS, linestyle=style, color="#111827", lw=1.5, marker=".", ms=3,
                label=f"{stat} {LABELS.get(column, column)}")
    ax.set_ylabel("latency (ms)")
    _ms_axis(ax.yaxis)
    ax.set_ylim(0, float(np.nanmax(table[["p50", "p95", "p99"]].to_numpy())) * MS * 1.3)
    ax.set_xlabel("time since start of run (s)")
    twin = ax.twinx()
    twin.bar(centre, table["count"], width=window * 0.9, color="#9ca3af", alpha=0.25, label="turns per window")
    twin.set_ylabel("turns per window", color="#6b7280")
    twin.tick_params(axis="y", colors="#6b7280")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    if shade and not isinstance(data, pd.DataFrame):
        shade_kafka_windows(ax, data)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8, ncols=3)
    ax.set_title(f"{LABELS.get(column, column)} latency over time ({window:g} s windows)")
    return ax


# Services ---------------------------------------------------------------------------------------------
def utilisation(results: Run | pd.DataFrame, window: float = 10.0, ax: Axes | None = None,
                end: float | None = None) -> Axes:
    """Time-weighted utilisation (% of workers busy) of each service per ``window`` seconds
    (see :func:`pipesim.analysis.utilisation`).

    >>> plots.utilisation(res, window=30)   # doctest: +SKIP
    """
    ax = _axes(ax, (10, 3.5))
    services = results if isinstance(results, pd.DataFrame) else results.services
    if end is None and not isinstance(results, pd.DataFrame):
        end = float(results.events["t"].max())
    table = analysis.utilisation(services, window, end=end)
    if table.empty:
        return _empty(ax, "no service activity", "Service utilisation")
    for name, g in table.groupby("service", sort=False, observed=True):
        x = np.append(g["start"].to_numpy(), g["end"].iloc[-1])
        y = np.append(g["utilisation"].to_numpy(), g["utilisation"].iloc[-1]) * 100
        ax.step(x, y, where="post", color=SERVICE_COLOURS.get(str(name)),
                label=f"{str(name).upper()} ({int(g['capacity'].iloc[-1])} workers)")
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"busy workers (%, {window:g} s mean)")
    ax.set_xlabel("time since start of run (s)")
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    ax.grid(True, alpha=0.3)
    ax.set_title("Service utilisation")
    return ax


def queue_length(results: Run | pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Requests waiting for a worker, per service, over time (every change, as steps; samples read as
    :func:`pipesim.analysis.settled_services`).

    >>> plots.queue_length(res)   # doctest: +SKIP
    """
    ax = _axes(ax, (10, 3.5))
    services = results if isinstance(results, pd.DataFrame) else results.services
    if services.empty:
        return _empty(ax, "no service activity", "Queue length")
    for name, g in analysis.settled_services(services).groupby("service", sort=False, observed=True):
        ax.step(g["t"], g["queued"], where="post", color=SERVICE_COLOURS.get(str(name)), lw=1.2,
                label=str(name).upper())
    ax.set_ylim(bottom=0)
    ax.set_ylabel("requests queued")
    ax.set_xlabel("time since start of run (s)")
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    ax.grid(True, alpha=0.3)
    ax.set_title("Queue length")
    return ax


def service_load(results: Run, window: float = 10.0, ax: Sequence[Axes] | None = None) -> Figure:
    """:func:`utilisation` above :func:`queue_length`, on a shared time axis, Kafka stalls shaded.

    >>> plots.service_load(res)   # doctest: +SKIP
    """
    if ax is None:
        fig, axes = subplots(2, 1, figsize=(10, 6), sharex=True)
    else:
        axes = list(ax)
        fig = axes[0].figure
    utilisation(results, window, ax=axes[0])
    queue_length(results, ax=axes[1])
    axes[0].set_xlabel("")
    for a in axes:
        shade_kafka_windows(a, results, label=False)
    return fig


#: Lines of failed turns, one per cause, most frequent first.
_FAILURE_COLOURS = ("#dc2626", "#7c3aed", "#ea580c", "#0f766e")
_FAILURE_MARKERS = ("x", "+", "1", "2")


# Kafka and incidents ------------------------------------------------------------------------------------
def kafka_timeouts(results: Run, window: float = 10.0, ax: Axes | None = None) -> Axes:
    """Kafka timeouts per ``window`` seconds, stacked by service, with failed turns as one line per cause
    (:func:`pipesim.analysis.failure_cause`, the run's count in the legend) and Kafka stalls / outages
    (``Results.kafka_windows``) shaded.

    >>> plots.kafka_timeouts(res, window=5)   # doctest: +SKIP
    """
    ax = _axes(ax, (10, 3.5))
    counts = analysis.incident_counts(results.events, window)
    x = counts.index.to_numpy(float) + window / 2
    bottom = np.zeros(len(counts))
    for svc in SERVICES:
        values = counts[f"{svc}_timeouts"].to_numpy()
        if values.any():
            ax.bar(x, values, bottom=bottom, width=window * 0.9, color=SERVICE_COLOURS[svc],
                   label=f"{svc.upper()} Kafka timeouts")
            bottom = bottom + values
    failed = analysis.failure_counts(results.events, window)  # the same windows as counts
    for cause, colour, marker in zip(failed.columns, _FAILURE_COLOURS, _FAILURE_MARKERS, strict=False):
        ax.plot(x, failed[cause], color=colour, marker=marker, ms=4, lw=1,
                label=f"failed, {cause}: {failed[cause].sum():,}")
    if len(failed.columns) > len(_FAILURE_COLOURS):  # the rarest causes, together
        rest = failed[failed.columns[len(_FAILURE_COLOURS):]].sum(axis=1)
        ax.plot(x, rest, color="#6b7280", marker=".", ms=4, lw=1, label=f"failed, other causes: {rest.sum():,}")
    shade_kafka_windows(ax, results)
    if not counts["kafka_timeouts"].any():
        note = "no Kafka timeouts in this run" + ("; turns failed for the causes in the legend"
                                                  if failed.to_numpy().any() else "")
        ax.text(0.01, 0.95, note, transform=ax.transAxes, ha="left", va="top", color="#6b7280")
    if len(counts) == 1:  # a run shorter than one window: show that window, not a sliver around its centre
        ax.set_xlim(counts.index[0], counts.index[0] + window)
    top = max(float(bottom.max()), float(counts["failed_turns"].max()), 1.0)
    ax.set_ylim(0, top * 1.4)  # room for the legend and the note above the data
    ax.set_ylabel(f"per {window:g} s")
    ax.set_xlabel("time since start of run (s)")
    if ax.get_legend_handles_labels()[0]:  # a run without incidents has nothing to label
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Kafka timeouts and failed turns, by cause")
    return ax


def over_time(results: Run, window: float = 10.0, ax: Sequence[Axes] | None = None) -> Figure:
    """:func:`latency_over_time` above :func:`kafka_timeouts`: how stalls show up in latency and failures.

    >>> plots.over_time(res)   # doctest: +SKIP
    """
    if ax is None:
        fig, axes = subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=[3, 2])
    else:
        axes = list(ax)
        fig = axes[0].figure
    latency_over_time(results, window, ax=axes[0])
    kafka_timeouts(results, window, ax=axes[1])
    axes[0].set_xlabel("")
    return fig


# One session ----------------------------------------------------------------------------------------------
def interesting_session(results: Run) -> str:
    """The session to show by default: the one with the most kinds of incident (Kafka timeout, failed
    turn, barge-in), then the most incidents, then the first.

    >>> plots.interesting_session(res)   # doctest: +SKIP
    'sim-00042'
    """
    inc = analysis.incidents(results.events)
    if inc.empty:
        ids = results.events["session_id"]
        return str(ids.iloc[0]) if len(ids) else ""
    per = inc.groupby("session_id", observed=True).agg(kinds=("event", "nunique"), n=("event", "size"))
    per = per.sort_values(["kinds", "n"], ascending=False, kind="stable")
    return str(per.index[0])


def _segments(t: np.ndarray, values: np.ndarray, end: float) -> dict[str, list[tuple[float, float]]]:
    """(start, width) spans of each value of a step series that holds from t[i] to t[i+1]."""
    stops = np.append(t[1:], end)
    spans: dict[str, list[tuple[float, float]]] = {}
    for start, stop, value in zip(t, stops, values, strict=True):
        if stop > start and isinstance(value, str):
            spans.setdefault(value, []).append((float(start), float(stop - start)))
    return spans


def session_timeline(results: Run, session_id: str | None = None,
                     ax: Sequence[Axes] | None = None, start: float | None = None,
                     end: float | None = None) -> Figure:
    """One session over time, like the dashboard: a lane for the session's status, the pipeline state
    (listening / processing / complete) and each service (STT, LLM, TTS: idle / waiting / executing /
    complete); beneath, the audio buffer (KB) and the running audio quality while the user speaks.
    Kafka timeouts are red crosses on their service's lane; failed turns red dashed lines; barge-ins
    purple dotted lines.

    ``session_id`` defaults to :func:`interesting_session`. ``start``/``end`` (s) zoom in. ``ax`` is a
    pair of axes (lanes, buffer) to draw into. Returns the Figure.

    >>> plots.session_timeline(res, "sim-00001", end=60)   # doctest: +SKIP
    """
    if session_id is None:
        session_id = interesting_session(results)
    ev = results.events
    tr = ev[(ev["session_id"] == session_id) & (ev["seq"] >= 0)].sort_values("seq", kind="stable")
    if ax is None:
        fig, axes = subplots(2, 1, figsize=(12, 5.5), sharex=True, height_ratios=[3, 2])
    else:
        axes = list(ax)
        fig = axes[0].figure
    lanes_ax, buf_ax = axes[0], axes[1]
    if tr.empty:
        _empty(lanes_ax, f"no session {session_id!r} in this run" if session_id else "no sessions in this run")
        return fig
    t = tr["t"].to_numpy(float)
    stopped = tr["status"].to_numpy() == "stopped"
    t_end = float(t[stopped][0]) if stopped.any() else float(ev["t"].max())
    lo = float(t[0]) if start is None else start
    hi = t_end if end is None else end
    if hi <= lo:  # a session that lived for an instant (so far): show a second of it
        hi = lo + 1.0
        if not stopped.any():
            t_end = hi
    lanes = [("session", "status", STATUS_COLOURS), ("pipeline", "state", PIPELINE_COLOURS),
             *((svc.upper(), svc, STATE_COLOURS) for svc in SERVICES)]
    lane_y = {}
    for i, (_name, column, colours) in enumerate(lanes):
        y = len(lanes) - 1 - i
        lane_y[column] = y
        for value, spans in _segments(t, tr[column].to_numpy(), t_end).items():
            lanes_ax.broken_barh(spans, (y - 0.32, 0.64), facecolors=colours.get(value, "#d1d5db"),
                                 edgecolor="none", zorder=2)
    lanes_ax.set_yticks(list(range(len(lanes))), [name for name, _, _ in reversed(lanes)])
    lanes_ax.set_ylim(-0.6, len(lanes) - 0.4)
    marks = tr[tr["event"].isin(analysis.INCIDENTS)]
    for row in marks.itertuples(index=False):
        if row.event == "kafka_timeout":
            lanes_ax.plot(row.t, lane_y.get(str(row.service), 0), marker="X", color="#dc2626", ms=8,
                          mec="white", mew=0.8, linestyle="none", zorder=5)
        else:
            style = ("--", "#dc2626") if row.event == "turn_failed" else (":", "#7c3aed")
            for a in axes:
                a.axvline(row.t, linestyle=style[0], color=style[1], lw=1.3, zorder=4)
    legend = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items()]
    legend += [Patch(color=PIPELINE_COLOURS["listening"], label="listening"),
               Patch(color=PIPELINE_COLOURS["processing"], label="processing")]
    legend.append(Patch(color=STATUS_COLOURS["active"], label="session active"))
    if (tr["status"] == "paused").any():
        legend.append(Patch(color=STATUS_COLOURS["paused"], label="session paused"))
    legend += [Line2D([], [], marker="X", color="#dc2626", linestyle="none", label="Kafka timeout"),
               Line2D([], [], linestyle="--", color="#dc2626", label="failed turn"),
               Line2D([], [], linestyle=":", color="#7c3aed", label="barge-in")]
    windows = _windows(results)
    if not windows.empty:  # behind the lanes: visible between them, not tinting the states
        n = len(lanes)
        for row in windows.itertuples(index=False):
            topics = [t.strip() for t in str(row.topics).split(",")]
            if "all" in topics or set(SERVICES) <= set(topics):
                lanes_ax.axvspan(row.start, row.end, color="#ef4444", alpha=0.45, lw=0, zorder=1)
                continue
            for topic in topics:  # one topic stalled: shade its service's lane only
                y = lane_y.get(topic)
                if y is not None:
                    lanes_ax.axvspan(row.start, row.end, ymin=(y + 0.1) / n, ymax=(y + 1.1) / n,
                                     color="#ef4444", alpha=0.45, lw=0, zorder=1)
        shade_kafka_windows(buf_ax, results, label=False)
        legend.append(Patch(color="#ef4444", alpha=0.45, label="Kafka stall / outage"))
    lanes_ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    turns = results.turns[results.turns["session_id"] == session_id]
    outcomes = ", ".join(f"{n} {k}" for k, n in turns["outcome"].value_counts().items())
    lanes_ax.set_title(f"Session {session_id}: {len(turns)} turns" + (f" ({outcomes})" if outcomes else ""),
                       loc="left")

    # Beneath: the buffer while the user speaks, and the running quality of the utterance.
    buf = tr["buffer_size"].astype("float64").to_numpy() / 1000
    buf_ax.step(np.append(t, t_end), np.append(buf, buf[-1]), where="post", color="#0f766e", lw=1.2,
                label="buffer (KB)")
    buf_ax.fill_between(np.append(t, t_end), np.append(buf, buf[-1]), step="post", color="#0f766e", alpha=0.15)
    buf_ax.set_ylabel("buffer (KB)", color="#0f766e")
    buf_ax.set_ylim(bottom=0)
    buf_ax.set_xlabel("time since start of run (s)")
    q_ax = buf_ax.twinx()
    audio = tr["event"].to_numpy() == "audio"
    utterance = np.cumsum(~audio)
    for _, g in tr[audio].groupby(utterance[audio]):
        q_ax.plot(g["t"], g["audio_quality"], color="#b45309", marker=".", ms=4, lw=1.2)
    scenario = getattr(results, "scenario", None)
    threshold = scenario.quality.poor_threshold if scenario is not None else 0.35
    q_ax.axhline(threshold, color="#b45309", linestyle=":", lw=1)
    q_ax.set_ylim(0, 1.05)
    q_ax.set_ylabel("audio quality (0-1)", color="#b45309")
    q_ax.legend(handles=[Line2D([], [], color="#0f766e", label="buffer (KB)"),
                         Line2D([], [], color="#b45309", marker=".", label="audio quality while speaking"),
                         Line2D([], [], color="#b45309", linestyle=":", label="poor-quality threshold")],
                loc="upper left", bbox_to_anchor=(1.08, 1), fontsize=8, frameon=False)
    lanes_ax.set_xlim(lo, hi)
    return fig


# Saving ------------------------------------------------------------------------------------------------
def plan_figure(result: Any, pyplot: bool = True) -> Figure:  # a pipesim.planning.Plan: planning imports plots
    """Each SLO's figure against each varied value of a :func:`pipesim.plan` (or ``headroom``): one panel per
    SLO figure (rows) and varied path (columns), every configuration evaluated a point: the mean and its
    interval (green met, red violated, amber undecided; faded when it differs from the recommendation in
    another path), the SLO's bound (dashed), the recommendation (a vertical line); a point whose mean is
    infinite or with a collapsed run is a cross at the top of the panel.

    >>> from pipesim.planning import plan
    >>> sessions = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 40}, "turns": 2}
    >>> found = plan({"sessions": sessions}, ["e2e_latency_p95 <= 3s"], vary={"services.llm.capacity": "1..8"},
    ...              until=60, warmup_s=0)
    >>> [ax.get_xlabel() for ax in plan_figure(found, pyplot=False).axes]
    ['services.llm.capacity']
    """
    colours = {"met": "#1a7f37", "violated": "#cf222e", "undecided": "#9a6700"}
    figures = list(dict.fromkeys(slo.figure for slo in result.slos))
    paths = [d.path for d in result.dimensions]
    table = result.table
    centre = result.recommended or (result.evaluations[-1].values if result.evaluations else {})
    fig, axes = subplots(len(figures), len(paths), figsize=(4.5 * len(paths) + 1, 3.2 * len(figures) + 0.6),
                          pyplot=pyplot, squeeze=False)
    for col, path in enumerate(paths):
        others = [p for p in paths if p != path]
        on_slice = ((table[others] == pd.Series({p: centre[p] for p in others})).all(axis=1).to_numpy()
                    if others else np.ones(len(table), dtype=bool))
        for row, figure in enumerate(figures):
            ax = axes[row][col]
            slos = [slo for slo in result.slos if slo.figure == figure]
            unit = slos[0].unit
            scale = 1.0 / ({"ms": 0.001, "s": 1.0}[unit] if unit else 1.0)
            mean, low, high = (table[f"{figure} {k}"].to_numpy(dtype=float) * scale for k in ("mean", "low", "high"))
            x = table[path].to_numpy(dtype=float)
            bad = ~np.isfinite(mean) | (table["collapsed"].to_numpy() > 0)
            for slo in slos:
                ax.axhline(slo.bound * scale, color="#555", linestyle="--", linewidth=1, label=f"SLO: {slo}")
            for verdict, colour in colours.items():
                for faded in (True, False):
                    keep = (table["verdict"].to_numpy() == verdict) & ~bad & (on_slice != faded)
                    if keep.any():
                        err = np.nan_to_num(np.vstack([mean[keep] - low[keep], high[keep] - mean[keep]]))
                        ax.errorbar(x[keep], mean[keep], yerr=err, fmt="o", color=colour, capsize=3,
                                    alpha=0.3 if faded else 1.0, label=None if faded else verdict)
            if bad.any():
                finite = np.concatenate([high[~bad & np.isfinite(high)], mean[~bad & np.isfinite(mean)],
                                         [s.bound * scale for s in slos]])
                top = float(finite.max()) * 1.15 if len(finite) else 1.0
                ax.scatter(x[bad], np.full(bad.sum(), top), marker="x", color=colours["violated"], s=50,
                           alpha=np.where(on_slice[bad], 1.0, 0.3), label="collapsed or infinite")
            if path in centre:
                ax.axvline(float(centre[path]), color="#0969da", linewidth=1.5, alpha=0.6,
                           label=f"{'recommended' if result.recommended else 'best tried'}: {centre[path]:g}")
            ax.set_xlabel(path)
            ax.xaxis.set_major_locator(MaxNLocator(integer=all(float(v).is_integer() for v in x)))
            ax.set_ylabel(f"{figure}{f' ({unit})' if unit else ''}")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.question} {result.scenario}")
    return fig


def save_standard_figures(results: Run, out_dir: str | Path, dpi: int = 110,
                          session_id: str | None = None, window: float | None = None) -> list[Path]:
    """Write the standard figures of a run as PNG into ``out_dir`` and return their paths:
    ``latency_cdf``, ``latency_histograms``, ``latency_breakdown``, ``service_load``, ``over_time``
    (latency, Kafka timeouts and failures over time) and ``session_timeline`` (``session_id``, default
    :func:`interesting_session`).

    Figures are drawn on bare ``Figure`` objects (the Agg renderer), never registered with pyplot: this
    works with any backend, from a script, a test or a notebook, and leaves no figure open.

    >>> plots.save_standard_figures(res, "out/figures")   # doctest: +SKIP
    [PosixPath('out/figures/latency_cdf.png'), ...]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_end = float(results.events["t"].max()) if len(results.events) else 0.0
    window = window or max(5.0, round(run_end / 60 / 5) * 5.0)
    written = []

    def save(fig: Figure, name: str) -> None:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
        fig.clear()

    fig, ax = subplots(figsize=(9, 5.5), pyplot=False)
    latency_cdf(results, ax=ax)
    save(fig, "latency_cdf")
    fig, grid = subplots(2, 3, figsize=(12.6, 6), pyplot=False)
    latency_histograms(results, ax=list(grid.ravel()))
    save(fig, "latency_histograms")
    fig, ax = subplots(figsize=(9, 5.5), pyplot=False)
    breakdown_bars(results, ax=ax)
    save(fig, "latency_breakdown")
    fig, axes = subplots(2, 1, figsize=(10, 6), pyplot=False, sharex=True)
    service_load(results, window, ax=list(axes))
    save(fig, "service_load")
    fig, axes = subplots(2, 1, figsize=(10, 6.5), pyplot=False, sharex=True, height_ratios=[3, 2])
    over_time(results, window, ax=list(axes))
    save(fig, "over_time")
    fig, axes = subplots(2, 1, figsize=(12, 5.5), pyplot=False, sharex=True, height_ratios=[3, 2])
    session_timeline(results, session_id, ax=list(axes))
    save(fig, "session_timeline")
    return written


class ResultsPlots:
    """The figures of one run, as ``res.plot.<name>(...)``; each takes the same options as the function
    of this module with the same name.

    >>> res.plot.breakdown()            # doctest: +SKIP
    >>> res.plot.timeline("sim-00007")  # doctest: +SKIP
    """

    def __init__(self, results: Run) -> None:
        self._results = results

    def cdf(self, **kw: Any) -> Axes:
        """:func:`latency_cdf`"""
        return latency_cdf(self._results, **kw)

    def histogram(self, column: str = "e2e_latency", **kw: Any) -> Axes:
        """:func:`latency_histogram`"""
        return latency_histogram(self._results, column, **kw)

    def histograms(self, **kw: Any) -> Figure:
        """:func:`latency_histograms`"""
        return latency_histograms(self._results, **kw)

    def breakdown(self, **kw: Any) -> Axes:
        """:func:`breakdown_bars`"""
        return breakdown_bars(self._results, **kw)

    def latency_over_time(self, window: float = 10.0, **kw: Any) -> Axes:
        """:func:`latency_over_time`"""
        return latency_over_time(self._results, window, **kw)

    def utilisation(self, window: float = 10.0, **kw: Any) -> Axes:
        """:func:`utilisation`"""
        return utilisation(self._results, window, **kw)

    def queue_length(self, **kw: Any) -> Axes:
        """:func:`queue_length`"""
        return queue_length(self._results, **kw)

    def service_load(self, window: float = 10.0, **kw: Any) -> Figure:
        """:func:`service_load`"""
        return service_load(self._results, window, **kw)

    def kafka_timeouts(self, window: float = 10.0, **kw: Any) -> Axes:
        """:func:`kafka_timeouts`"""
        return kafka_timeouts(self._results, window, **kw)

    def over_time(self, window: float = 10.0, **kw: Any) -> Figure:
        """:func:`over_time`"""
        return over_time(self._results, window, **kw)

    def timeline(self, session_id: str | None = None, **kw: Any) -> Figure:
        """:func:`session_timeline`"""
        return session_timeline(self._results, session_id, **kw)

    def save(self, out_dir: str | Path, **kw: Any) -> list[Path]:
        """:func:`save_standard_figures`"""
        return save_standard_figures(self._results, out_dir, **kw)
