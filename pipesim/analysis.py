"""From a trace to tidy pandas DataFrames and summaries: where every millisecond goes.

Use it through :class:`pipesim.Results`; the functions here take DataFrames so that they also work on
turns loaded from Parquet or concatenated across runs.

>>> import pandas as pd
>>> turns = pd.DataFrame({"e2e_latency": [0.9, 1.1, 1.4], "scenario": ["a", "a", "b"]})
>>> percentiles(turns, ["e2e_latency"])["p50"].round(2).tolist()
[1.1]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, get_args

import numpy as np
import pandas as pd

from pipesim.vocabulary import SERVICES, PipelineState, ServiceState, SessionStatus


class Run(Protocol):
    """What the tables and figures read of a run: a :class:`pipesim.Results` is one, and so is anything with
    these DataFrames (the data flows one way: model -> trace -> DataFrames -> figures)."""

    @property
    def turns(self) -> pd.DataFrame: ...

    @property
    def events(self) -> pd.DataFrame: ...

    @property
    def services(self) -> pd.DataFrame: ...

    @property
    def kafka_windows(self) -> pd.DataFrame: ...


#: The stages of voice-to-voice latency, in the order they happen; they add up to ``e2e_latency``.
STAGES = ("end_of_utterance_delay", "stt_stage", "llm_stage", "tts_stage")
#: The figures a summary reports: the stages, then LiveKit Agents' / Pipecat's names for what they measure
#: (``ttfb`` is left out: it is ``tts_stage`` under another name).
FIGURES = (*STAGES, "transcription_delay", "ttft", "e2e_latency")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
#: The latency figures measured per run (:func:`pipesim.replications.run_metrics`, SLOs): those of a run's
#: summary, and each service's wait for a worker.
RUN_FIGURES = (*FIGURES, *(f"{svc}_queue" for svc in SERVICES))
#: The statistics of each latency figure measured per run: the mean and these quantiles.
RUN_QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def percentiles(df: pd.DataFrame, columns: Sequence[str] = FIGURES, by: str | Sequence[str] | None = None,
                ms: bool = False) -> pd.DataFrame:
    """count, mean, p50, p90, p95, p99 and max of each column (seconds), overall or per group.

    One row per column (and group), so the result reads top-down and plots directly. ``by`` is any column
    or list of columns, e.g. ``scenario`` (:func:`combine`), ``session_id``, :func:`quality_band` or
    :func:`time_window`. ``ms=True`` gives milliseconds, in columns named ``mean_ms``, ``p50_ms``...

    >>> turns = pd.DataFrame({"e2e_latency": [0.9, 1.1, 1.4], "band": ["a", "a", "b"]})
    >>> percentiles(turns, ["e2e_latency"], by="band", ms=True)["p50_ms"].round(1).tolist()
    [1000.0, 1400.0]
    """
    columns = [c for c in columns if c in df.columns]

    def one(frame: pd.DataFrame) -> pd.DataFrame:
        data = frame[columns]
        out = pd.DataFrame({"count": data.count(), "mean": data.mean()})
        for name, q in QUANTILES.items():
            out[name] = data.quantile(q)
        out["max"] = data.max()
        out.index.name = "figure"
        return out

    if by is None:
        out = one(df)
    else:
        keys = [by] if isinstance(by, str) else list(by)
        parts = {key: one(group) for key, group in df.groupby(keys if len(keys) > 1 else keys[0], observed=True)}
        if parts:
            out = pd.concat(parts, names=keys)
        else:  # no group: no row, but the same index levels as with groups
            out = one(df.iloc[:0]).iloc[:0]
            out.index = pd.MultiIndex.from_arrays([[]] * (len(keys) + 1), names=[*keys, "figure"])
    if ms:
        stats = ["mean", *QUANTILES, "max"]
        out[stats] = out[stats] * 1000
        out = out.rename(columns={c: f"{c}_ms" for c in stats})
    return out


def sessions_frame(events: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
    """One row per session: when it was created and ended, its turns by outcome, timeouts, latency.

    ``events`` needs only the ``session_created`` and ``session_stopped`` rows (``t``, ``session_id``,
    ``event``).
    """
    ev = events[events["event"].isin(["session_created", "session_stopped"])]
    ev = ev.astype({"session_id": str, "event": str})  # codes (categoricals) would pivot to every category
    life = ev.pivot_table(
        index="session_id", columns="event", values="t", aggfunc="first")
    life = life.reindex(columns=["session_created", "session_stopped"]).rename(
        columns={"session_created": "created", "session_stopped": "ended"})
    if turns.empty:
        counts = pd.DataFrame(index=life.index)
    else:
        counts = pd.crosstab(turns["session_id"], turns["outcome"])
        stats = turns.groupby("session_id").agg(
            turns=("turn_id", "count"),
            kafka_timeouts=("stt_timeouts", "sum"),
            e2e_p50=("e2e_latency", "median"),
            e2e_max=("e2e_latency", "max"),
            audio_quality=("audio_quality", "mean"),
        )
        stats["kafka_timeouts"] += turns.groupby("session_id")[["llm_timeouts", "tts_timeouts"]].sum().sum(axis=1)
        counts = stats.join(counts)
    out = life.join(counts, how="outer")
    for outcome in ("complete", "barge_in", "failed", "cancelled"):
        out[outcome] = out[outcome].fillna(0).astype("int64") if outcome in out else 0
    out["turns"] = out["turns"].fillna(0).astype("int64") if "turns" in out else 0
    out["duration"] = out["ended"] - out["created"]
    out.index.name = "session_id"
    out.columns.name = None  # the pivot's "event": a name Parquet would not keep
    return out.reset_index()


def summary_table(turns: pd.DataFrame) -> pd.DataFrame:
    """The run's headline table in milliseconds: p50/p95/p99 of every stage and of voice-to-voice."""
    table = percentiles(turns, FIGURES)[["count", "p50", "p95", "p99", "max"]]
    ms = table[["p50", "p95", "p99", "max"]].mul(1000).round(0)
    ms.columns = [f"{c}_ms" for c in ms.columns]
    return table[["count"]].join(ms)


def counts(turns: pd.DataFrame) -> dict[str, int]:
    """Turns by outcome, Kafka timeouts and failures of a run."""
    outcome = turns["outcome"].value_counts() if not turns.empty else pd.Series(dtype="int64")
    timeouts = int(turns[["stt_timeouts", "llm_timeouts", "tts_timeouts"]].sum().sum()) if not turns.empty else 0
    return {
        "turns": int(len(turns)),
        "complete": int(outcome.get("complete", 0)),
        "barge_in": int(outcome.get("barge_in", 0)),
        "failed": int(outcome.get("failed", 0)),
        "cancelled": int(outcome.get("cancelled", 0)),
        "kafka_timeouts": timeouts,
    }


def failure_cause(error: str | None) -> str:
    """A failed turn's cause: its ``error`` without the details in parentheses, which vary from turn to turn.

    >>> failure_cause("stt: low audio quality (0.31), re-prompting the user")
    'stt: low audio quality, re-prompting the user'
    >>> failure_cause("llm: Kafka timed out 4 times (retry budget 3)")
    'llm: Kafka timed out 4 times'
    """
    if not isinstance(error, str) or not error:
        return "unknown"
    return re.sub(r"\s*\([^)]*\)", "", error)


def failures(turns: pd.DataFrame | Any) -> pd.Series:
    """Failed turns by cause (:func:`failure_cause` of their ``error``), most frequent first.

    >>> turns = pd.DataFrame({"outcome": ["failed", "complete", "failed", "failed"],
    ...                       "error": ["stt: low audio quality (0.3), re-prompting the user", None,
    ...                                 "stt: low audio quality (0.2), re-prompting the user",
    ...                                 "llm: Kafka timed out 4 times (retry budget 3)"]})
    >>> failures(turns).to_dict()
    {'stt: low audio quality, re-prompting the user': 2, 'llm: Kafka timed out 4 times': 1}
    """
    turns = _turns_of(turns)
    failed = turns.loc[turns["outcome"] == "failed", "error"] if not turns.empty else pd.Series(dtype=object)
    causes = failed.map(failure_cause).value_counts(sort=False)
    # most first; ties in name order, so that the same run always prints the same lines
    order = sorted(causes.index, key=lambda cause: (-causes[cause], cause))
    return causes.reindex(order).astype("int64").rename("failed_turns").rename_axis("cause")


#: What kind of failure a turn's ``error`` is (:func:`failure_cause` gives its words): ``timeout``: Kafka timed
#: out past the retry budget (the turn ran
#: out of time waiting for a worker or for Kafka: what more workers buy back, outages aside); ``audio``: the
#: audio was too poor and the user is re-prompted; ``service_error``: the service answered with an error
#: (``failure_probability``). Neither of the last two is bought back by more workers.
FAILURE_KINDS = ("timeout", "audio", "service_error")
#: A run *collapsed* when more than this share of the turns that started in the last third of it (after the
#: warm-up) failed by ``timeout``: it did not recover from overload by the end (see :func:`collapse_share`).
COLLAPSE_SHARE = 0.5


def failure_kind(turns: pd.DataFrame) -> pd.Series:
    """Each turn's kind of failure (one of :data:`FAILURE_KINDS`), None for a turn that did not fail.

    A failure whose message is none of the known ones counts as ``timeout``: a CI gate errs on the safe side.

    >>> turns = pd.DataFrame({"outcome": ["complete", "failed", "failed", "failed"],
    ...     "error": [None, "stt: Kafka timed out 4 times (retry budget 3)",
    ...               "stt: low audio quality (0.30), re-prompting the user", "llm: service error"]})
    >>> failure_kind(turns).tolist()
    [None, 'timeout', 'audio', 'service_error']
    """
    error = turns["error"].astype("string").fillna("")
    cause = np.select([error.str.contains("low audio quality", regex=False),
                       error.str.endswith(": service error")], ["audio", "service_error"], "timeout")
    return pd.Series(np.where(turns["outcome"] == "failed", cause, None), index=turns.index, dtype=object)


def collapse_criterion(threshold: float = COLLAPSE_SHARE) -> str:
    """The collapse criterion of :func:`collapse_share`, in words.

    >>> collapse_criterion(0.5)
    'more than 50% of the turns that started in the last third of a run, after the warm-up, failed by timeout'
    """
    return (f"more than {threshold:.0%} of the turns that started in the last third of a run, after the warm-up, "
            "failed by timeout")


def collapse_share(turns: pd.DataFrame, warmup_s: float = 0.0) -> float:
    """The share of the finished turns that started (``speech_start``) in the last third of the run after
    ``warmup_s`` (up to the last turn's start) and failed by ``timeout``; NaN when no turn finished there.

    A system pushed past capacity can stay overloaded (retries and stale work keep the queues full) or recover;
    runs of one configuration may split between the two. A run whose share is above :data:`COLLAPSE_SHARE`
    did not recover: it *collapsed*.

    >>> turns = pd.DataFrame({"speech_start": [10.0, 20.0, 80.0, 90.0], "outcome": ["failed", "complete",
    ...     "failed", "complete"], "error": ["stt: Kafka timed out 4 times (retry budget 3)", None,
    ...     "llm: Kafka timed out 4 times (retry budget 3)", None]})
    >>> collapse_share(turns)
    0.5
    """
    start = turns["speech_start"]
    begin = float(warmup_s)
    end = float(start.max()) if len(turns) else math.nan
    if not end > begin:
        return math.nan
    late = turns[(start >= begin + 2 * (end - begin) / 3) & turns["outcome"].notna()]
    return float((failure_kind(late) == "timeout").mean()) if len(late) else math.nan


# Grouping columns --------------------------------------------------------------------------------------
def quality_band(values: pd.DataFrame | pd.Series, bins: Sequence[float] = (0.35, 0.6),
                 labels: Sequence[str] = ("poor", "fair", "good")) -> pd.Series:
    """The band of each turn's ``audio_quality``: a categorical Series named ``quality_band``.

    ``bins`` are the inner edges; a value on an edge goes to the band above it, so with the default
    0.35 (the scenario's ``quality.poor_threshold``) "poor" means exactly what the model treats as poor.

    >>> turns = pd.DataFrame({"audio_quality": [0.2, 0.35, 0.9]})
    >>> quality_band(turns).tolist()
    ['poor', 'fair', 'good']
    >>> percentiles(turns.assign(e2e_latency=1.0, quality_band=quality_band(turns)),
    ...             ["e2e_latency"], by="quality_band")["count"].tolist()
    [1, 1, 1]
    """
    series = values["audio_quality"] if isinstance(values, pd.DataFrame) else values
    if len(labels) != len(bins) + 1:
        raise ValueError(f"need {len(bins) + 1} labels for {len(bins)} inner edges, got {len(labels)}")
    edges = [-np.inf, *bins, np.inf]
    return pd.cut(series, edges, labels=list(labels), right=False).rename("quality_band")


def time_window(values: pd.DataFrame | pd.Series, size: float = 60.0, column: str = "utterance_ended",
                start: float = 0.0) -> pd.Series:
    """The start (seconds) of the ``size``-second window each row's ``column`` falls in, named ``time_window``.

    >>> turns = pd.DataFrame({"utterance_ended": [3.0, 59.9, 61.0]})
    >>> time_window(turns, 60).tolist()
    [0.0, 0.0, 60.0]
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    series = values[column] if isinstance(values, pd.DataFrame) else values
    return (np.floor((series - start) / size) * size + start).rename("time_window")


def window_phase(values: pd.DataFrame | pd.Series, windows: pd.DataFrame, recovery_s: float = 30.0,
                 column: str = "utterance_ended") -> pd.Series:
    """Where each row's ``column`` lies relative to Kafka stall windows (``Results.kafka_windows``):
    ``before`` the first window, ``during`` a window, in ``recovery`` (less than ``recovery_s`` after a
    window ended) or ``after`` (any other time after the first window). A categorical named ``phase``.

    >>> w = pd.DataFrame({"start": [10.0], "end": [20.0]})
    >>> window_phase(pd.Series([5.0, 12.0, 25.0, 80.0]), w).tolist()
    ['before', 'during', 'recovery', 'after']
    """
    series = values[column] if isinstance(values, pd.DataFrame) else values
    t = series.to_numpy(dtype=float)
    phase = np.full(len(t), "before", dtype=object)
    if len(windows):
        starts, ends = windows["start"].to_numpy(float), windows["end"].to_numpy(float)
        phase[t >= starts.min()] = "after"
        recovering = ((t[:, None] >= ends) & (t[:, None] < ends + recovery_s)).any(axis=1)
        phase[recovering] = "recovery"
        during = ((t[:, None] >= starts) & (t[:, None] < ends)).any(axis=1)
        phase[during] = "during"
    phase[np.isnan(t)] = None
    cats = pd.CategoricalDtype(["before", "during", "recovery", "after"], ordered=True)
    return pd.Series(phase, index=series.index, name="phase").astype(cats)


def combine(runs: Mapping[str, Any] | Sequence[Any], table: str = "turns", label: str = "scenario",
            ) -> pd.DataFrame:
    """One DataFrame of several runs' ``table`` with a ``label`` column naming the run, for ``by=``.

    ``runs`` is a mapping ``{label: Results or DataFrame}`` or a sequence of Results (labelled by scenario
    name, then by seed if names repeat). The label column is an ordered categorical in the given order.

    >>> a = pd.DataFrame({"e2e_latency": [1.0, 2.0]})
    >>> b = pd.DataFrame({"e2e_latency": [3.0]})
    >>> percentiles(combine({"a": a, "b": b}), ["e2e_latency"], by="scenario")["p50"].tolist()
    [1.5, 3.0]
    """
    items = list(runs.items()) if isinstance(runs, Mapping) else list(zip(_labels(runs), runs, strict=True))
    frames = []
    for name, run in items:
        frame = run if isinstance(run, pd.DataFrame) else getattr(run, table)
        frames.append(frame.assign(**{label: name}))
    if not frames:
        return pd.DataFrame(columns=[label])
    out = pd.concat(frames, ignore_index=True)
    out[label] = pd.Categorical(out[label], categories=list(dict.fromkeys(n for n, _ in items)), ordered=True)
    return out


def _labels(runs: Sequence[Any]) -> list[str]:
    names = [str(getattr(getattr(r, "scenario", None), "name", f"run {i + 1}")) for i, r in enumerate(runs)]
    if len(set(names)) < len(names):
        names = [f"{n} (seed {getattr(r, 'seed', '?')})" for n, r in zip(names, runs, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return names


def _turns_of(run: Any) -> pd.DataFrame:
    return run if isinstance(run, pd.DataFrame) else run.turns


# The latency breakdown -----------------------------------------------------------------------------------
#: The parts of voice-to-voice latency, stage by stage. For every turn that reached the bot's
#: first audio they add up to ``e2e_latency`` (see :func:`breakdown`).
PARTS = ("end_of_utterance_delay",
         "stt_kafka", "stt_queue", "stt_service", "stt_retry",
         "llm_kafka", "llm_queue", "llm_first_token", "llm_first_phrase", "llm_retry",
         "tts_kafka", "tts_queue", "tts_service", "tts_retry")
#: Figures of a turn that are not additive parts of ``e2e_latency`` but explain it (see :func:`breakdown`).
DETAILS = ("ttft", "llm_total", "streaming_overlap", "ttfb", "tts_total")


def breakdown(turns: pd.DataFrame | Any) -> pd.DataFrame:
    """Where the voice-to-voice latency of every turn that reached the bot's first audio went (seconds).

    One row per such turn (failed turns and turns cut before first audio are left out), with
    ``session_id``, ``turn_id``, ``utterance_ended``, ``e2e_latency``, then the :data:`PARTS`, which add
    up to ``e2e_latency``:

    * ``end_of_utterance_delay``: from the end of speech until the endpointer declared the turn over;
    * ``<x>_kafka``: both Kafka legs (request and first response) of the attempt that succeeded;
    * ``<x>_queue``: waiting for a free worker;
    * ``stt_service``, ``tts_service``: the worker's time to its final transcript / first audio byte;
    * ``llm_first_token``: the LLM worker's time to its first token, then ``llm_first_phrase``: generating
      the rest of the first phrase, which is what TTS waits for (streaming);
    * ``<x>_retry``: time lost to Kafka timeouts, including backoff.

    and the :data:`DETAILS`, which overlap the parts and do not add up: ``ttft`` (LLM request to first
    token), ``llm_total`` (LLM request to last token), ``streaming_overlap`` (generation after TTS had
    started, hidden from the user), ``ttfb`` (TTS request to first audio) and ``tts_total`` (TTS request
    to the end of the reply: played out, or cut by a barge-in).

    >>> import pipesim
    >>> res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 3}}}, progress=False)
    >>> b = breakdown(res.turns)
    >>> bool(np.allclose(b[list(PARTS)].sum(axis=1), b["e2e_latency"]))
    True
    """
    turns = _turns_of(turns)
    t = turns[turns["e2e_latency"].notna()]
    out = t[["session_id", "turn_id", "utterance_ended", "e2e_latency"]].copy()
    first_phrase = t["llm_stage"] - t["ttft"]
    for part in PARTS:
        if part == "llm_first_phrase":
            out[part] = first_phrase
        elif part == "llm_first_token":
            out[part] = t["llm_service"] - first_phrase
        else:
            out[part] = t[part]
    out["ttft"] = t["ttft"]
    out["llm_total"] = t["llm_duration"]
    out["streaming_overlap"] = t["streaming_overlap"]
    out["ttfb"] = t["ttfb"]
    out["tts_total"] = t["turn_end"] - (t["first_audio"] - t["tts_stage"])
    return out


def percentile_breakdown(turns: pd.DataFrame | Any, quantiles: Sequence[float] = (0.5, 0.95, 0.99),
                         band: float = 0.025) -> pd.DataFrame:
    """The mean composition (seconds, :data:`PARTS`) of the turns *around* each percentile of e2e latency.

    Percentiles do not add up (the p95 of a sum is not the sum of the parts' p95s), so the composition of
    "a p95 turn" is estimated from the turns whose ``e2e_latency`` lies between the ``q - w`` and ``q + w``
    quantiles, with ``w = min(band, (1 - q) / 2)``: p50 uses the turns between p47.5 and p52.5, p95 those
    between p92.5 and p97.5, p99 those between p98.5 and p99.5 (the band never reaches the maximum, so one
    outlier cannot dominate). If a band holds no turn, the turn nearest the percentile is used. The parts'
    means add up to ``e2e_mean``, the mean latency of the band, which is close to ``e2e_quantile``.

    One row per quantile (index ``p50``, ``p95``...), columns :data:`PARTS`, ``turns`` (how many turns the
    band holds), ``e2e_mean`` and ``e2e_quantile``.

    >>> turns = pd.DataFrame({"e2e_latency": np.linspace(1, 2, 101), "end_of_utterance_delay": 0.3})
    >>> percentile_breakdown(turns, [0.5])[["turns", "e2e_mean"]].round(3).to_dict("records")
    [{'turns': 5, 'e2e_mean': 1.5}]
    """
    b = breakdown(turns) if "stt_stage" in _turns_of(turns) else _turns_of(turns)
    b = b[b["e2e_latency"].notna()]
    parts = [p for p in PARTS if p in b.columns]
    e2e = b["e2e_latency"]
    rows = {}
    for q in quantiles:
        if not 0 < q < 1:
            raise ValueError(f"quantiles must be between 0 and 1, got {q}")
        name = f"p{q * 100:g}"
        if e2e.empty:
            rows[name] = pd.Series({**dict.fromkeys(parts, np.nan), "turns": 0, "e2e_mean": np.nan,
                                    "e2e_quantile": np.nan})
            continue
        w = min(band, (1 - q) / 2)
        lo, hi, value = e2e.quantile(q - w), e2e.quantile(q + w), e2e.quantile(q)
        chosen = b[(e2e >= lo) & (e2e <= hi)]
        if chosen.empty:
            chosen = b.loc[[(e2e - value).abs().idxmin()]]
        rows[name] = pd.Series({**chosen[parts].mean().to_dict(), "turns": len(chosen),
                                "e2e_mean": chosen["e2e_latency"].mean(), "e2e_quantile": value})
    out = pd.DataFrame(rows).T
    out["turns"] = out["turns"].astype("int64")
    out.index.name = "percentile"
    return out


def latency_over_time(turns: pd.DataFrame | Any, window: float = 60.0, column: str = "e2e_latency",
                      time_column: str = "utterance_ended") -> pd.DataFrame:
    """count, mean, p50...max (seconds) of ``column`` per ``window`` seconds of ``time_column``.

    Indexed by the window's start; windows without a turn are left out.

    >>> turns = pd.DataFrame({"utterance_ended": [1.0, 2.0, 70.0], "e2e_latency": [1.0, 3.0, 5.0]})
    >>> latency_over_time(turns, 60)["p50"].tolist()
    [2.0, 5.0]
    """
    turns = _turns_of(turns)
    framed = turns[[time_column, column]].assign(time_window=time_window(turns, window, time_column))
    table = percentiles(framed, [column], by="time_window")
    return table.droplevel("figure") if not table.empty else table


def compare(a: pd.DataFrame | Any, b: pd.DataFrame | Any, labels: Sequence[str] | None = None,
            figures: Sequence[str] = FIGURES) -> pd.DataFrame:
    """Two runs side by side: p50/p95/p99 (ms) of each figure for both, and ``delta`` (second - first).

    ``a`` and ``b`` are Results or turns DataFrames. ``labels`` default to the scenario names (with
    "(a)"/"(b)" if they are equal). Columns are a two-level index: (``count``/``p50_ms``/..., label).

    >>> x = pd.DataFrame({"e2e_latency": [1.0, 1.2, 1.4]})
    >>> y = pd.DataFrame({"e2e_latency": [1.1, 1.3, 1.6]})
    >>> compare(x, y, labels=["before", "after"]).loc["e2e_latency", ("p50_ms", "delta")]
    np.float64(100.0)
    """
    if labels is None:
        names = [str(getattr(getattr(r, "scenario", None), "name", d)) for r, d in ((a, "a"), (b, "b"))]
        labels = names if names[0] != names[1] else [f"{names[0]} (a)", f"{names[1]} (b)"]
    la, lb = labels
    if la == lb or "delta" in (la, lb):
        raise ValueError(f"labels must differ and not be 'delta', got {la!r} and {lb!r}")
    pa, pb = percentiles(_turns_of(a), figures), percentiles(_turns_of(b), figures)
    pa, pb = pa.reindex(pb.index.union(pa.index, sort=False)), pb.reindex(pb.index.union(pa.index, sort=False))
    order = [f for f in figures if f in pa.index]
    cols: dict[tuple[str, str], pd.Series] = {("count", la): pa["count"], ("count", lb): pb["count"]}
    for stat in ("p50", "p95", "p99"):
        va, vb = pa[stat] * 1000, pb[stat] * 1000
        cols[(f"{stat}_ms", la)], cols[(f"{stat}_ms", lb)], cols[(f"{stat}_ms", "delta")] = va, vb, vb - va
    out = pd.DataFrame(cols).loc[order].round(1)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    out.index.name = "figure"
    return out


# Services over time --------------------------------------------------------------------------------------
def _step_integral(t: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The integral from -inf to each ``x`` of the step function that is 0 before ``t[0]`` and ``v[i]``
    from ``t[i]`` on (the last of equal times wins)."""
    if len(t) == 0:
        return np.zeros(len(x))
    area = np.concatenate([[0.0], np.cumsum(np.diff(t) * v[:-1])])
    k = np.searchsorted(t, x, side="right") - 1
    safe = np.clip(k, 0, None)
    return np.where(k >= 0, area[safe] + v[safe] * (x - t[safe]), 0.0)


def settled_services(services: pd.DataFrame | Any) -> pd.DataFrame:
    """``Results.services`` with every sample as it is once the pool has handed freed workers to waiting
    requests.

    A service is a work-conserving pool: no worker stays idle while a request waits. But a sample taken
    right after a worker is released can show an idle worker *and* a queue, because the pool grants the
    freed worker to the next request a moment later, at the same simulated time, without a new sample.
    Here such a sample counts as the state after the grant: ``busy + k`` and ``queued - k``, with
    ``k = min(capacity - busy, queued)``. Samples that show no such moment are unchanged.

    >>> s = pd.DataFrame({"t": [1.0], "service": "llm", "busy": [1], "queued": [3], "capacity": 2})
    >>> settled_services(s)[["busy", "queued"]].to_dict("records")
    [{'busy': 2, 'queued': 2}]
    """
    services = services if isinstance(services, pd.DataFrame) else services.services
    spare = (services["capacity"] - services["busy"]).clip(lower=0)
    moved = np.minimum(spare, services["queued"].clip(lower=0))
    return services.assign(busy=services["busy"] + moved, queued=services["queued"] - moved)


def utilisation(services: pd.DataFrame | Any, window: float = 10.0, start: float = 0.0,
                end: float | None = None, settle: bool = True) -> pd.DataFrame:
    """Time-weighted utilisation and queue length of each service per ``window`` seconds.

    ``services`` is ``Results.services`` (or the Results): one sample per change of a service's ``busy``
    workers and ``queued`` requests, each holding until the next sample (a step function; before a
    service's first sample it is idle). Each window's figures are exact time averages of that function,
    not averages of the samples. ``end`` defaults to the last sample. With ``settle`` (the default) the
    samples are first read as :func:`settled_services` (no idle worker while a request waits).

    One row per service and window: ``service``, ``start``, ``end``, ``capacity``, ``busy`` (mean busy
    workers), ``utilisation`` (busy / capacity, 0..1), ``queued`` (mean queue length), ``queued_max``.

    >>> samples = pd.DataFrame({"t": [0.0, 5.0, 10.0], "service": "llm", "busy": [1, 2, 0],
    ...                         "queued": [0, 3, 0], "capacity": 2})
    >>> utilisation(samples, window=10, end=20)[["start", "utilisation", "queued"]].to_dict("records")
    [{'start': 0.0, 'utilisation': 0.75, 'queued': 1.5}, {'start': 10.0, 'utilisation': 0.0, 'queued': 0.0}]
    """
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    services = services if isinstance(services, pd.DataFrame) else services.services
    columns = ["service", "start", "end", "capacity", "busy", "utilisation", "queued", "queued_max"]
    if services.empty:
        return pd.DataFrame(columns=columns)
    if settle:
        services = settled_services(services)
    stop = float(services["t"].max()) if end is None else float(end)
    edges = np.arange(start, stop, window, dtype=float)
    edges = np.append(edges, stop) if len(edges) and edges[-1] < stop else np.array([start, stop])
    lo, hi = edges[:-1], edges[1:]
    frames = []
    for name, g in services.sort_values("t", kind="stable").groupby("service", sort=False, observed=True):
        t = g["t"].to_numpy(float)
        cap = g["capacity"].to_numpy(float)
        busy, queued = g["busy"].to_numpy(float), g["queued"].to_numpy(float)

        def mean(v: np.ndarray, t: np.ndarray = t) -> np.ndarray:
            return (_step_integral(t, v, hi) - _step_integral(t, v, lo)) / (hi - lo)

        # The queue's maximum: the value holding at the window's start, or any sample inside it.
        k0 = np.searchsorted(t, lo, side="right") - 1
        q_max = np.where(k0 >= 0, queued[np.clip(k0, 0, None)], 0.0)
        first, last = np.searchsorted(t, lo, side="left"), np.searchsorted(t, hi, side="left")
        for i in np.flatnonzero(last > first):
            q_max[i] = max(q_max[i], queued[first[i]:last[i]].max())
        frames.append(pd.DataFrame({
            "service": name, "start": lo, "end": hi, "capacity": cap[-1], "busy": mean(busy),
            "utilisation": mean(busy / cap), "queued": mean(queued), "queued_max": q_max}))
    out = pd.concat(frames, ignore_index=True)
    out["capacity"] = out["capacity"].astype("int64")
    return out[columns]


def worker_time(requests: pd.DataFrame, start: float = 0.0, end: float | None = None) -> pd.Series:
    """Seconds of worker time each request of ``Results.requests`` held within [``start``, ``end``]: from
    ``started`` to ``finished`` (a request still on a worker at the end: to ``end``, by default the last
    ``finished``); 0 for a request no worker served.

    >>> r = pd.DataFrame({"started": [1.0, 2.0, float("nan")], "finished": [3.0, float("nan"), 4.0]})
    >>> worker_time(r, end=5.0).tolist()
    [2.0, 3.0, 0.0]
    """
    stop = float(requests["finished"].max()) if end is None else float(end)
    held = requests["finished"].fillna(stop).clip(upper=stop) - requests["started"].clip(lower=start)
    return held.clip(lower=0.0).fillna(0.0)


def stale_work_share(requests: pd.DataFrame, start: float = 0.0, end: float | None = None) -> pd.Series:
    """Per service, the share (0..1) of its worker time within [``start``, ``end``] spent on stale requests:
    served after the orchestrator had given up on them (outcome ``stale``; ``kafka.stale_requests: served``).
    A collapsed service spends nearly all of it there: its workers answer requests nobody waits for.
    NaN for a service whose workers did nothing.

    >>> r = pd.DataFrame({"service": ["llm", "llm", "tts"], "started": [0.0, 1.0, 0.0],
    ...                   "finished": [1.0, 4.0, 1.0], "outcome": ["served", "stale", "served"]})
    >>> stale_work_share(r).to_dict()
    {'stt': nan, 'llm': 0.75, 'tts': 0.0}
    """
    held = worker_time(requests, start, end)
    stale = held.where(requests["outcome"] == "stale", 0.0)
    by = requests["service"].astype(str)
    total = held.groupby(by).sum().reindex(SERVICES, fill_value=0.0)
    share = stale.groupby(by).sum().reindex(SERVICES, fill_value=0.0) / total.where(total > 0)
    return share.rename("stale_work_share").rename_axis("service")


def services_summary(services: pd.DataFrame, requests: pd.DataFrame, start: float = 0.0,
                     end: float | None = None) -> pd.DataFrame:
    """One row per service over [``start``, ``end``] (``end`` defaults to the last sample): ``capacity``,
    ``utilisation`` and ``mean_queue`` (time averages of busy workers / capacity and of requests waiting,
    as :func:`utilisation` computes them from ``services``), then from ``requests``: ``requests`` (those
    that reached the queue in the window), ``stale`` (of them, served after their turn gave up on them) and
    ``stale_work_share`` (:func:`stale_work_share`).

    ``mean_queue`` counts every request waiting, stale ones too: in a collapsed run it can be thousands
    while the turns' own waits (``<service>_queue``) look modest, since no turn waits for a stale request.
    """
    stop = float(services["t"].max()) if end is None else float(end)
    if stop <= start:
        stop = start + 1.0  # an empty run: a window of nothing
    window = utilisation(services, window=stop - start, start=start, end=stop).set_index("service")
    reached = requests[(requests["enqueued"] >= start) & (requests["enqueued"] < stop)]
    by = reached["service"].astype(str)
    out = pd.DataFrame({
        "capacity": window["capacity"].reindex(SERVICES).fillna(0).astype("int64"),
        "utilisation": window["utilisation"].reindex(SERVICES).fillna(0.0),
        "mean_queue": window["queued"].reindex(SERVICES).fillna(0.0),
        "requests": by.value_counts().reindex(SERVICES, fill_value=0).astype("int64"),
        "stale": by[reached["outcome"] == "stale"].value_counts().reindex(SERVICES, fill_value=0).astype("int64"),
        "stale_work_share": stale_work_share(requests, start, stop),
    })
    out.index.name = "service"
    return out


# Sessions over time ---------------------------------------------------------------------------------------
_STATE_ORDER = {
    "state": get_args(PipelineState),
    "status": get_args(SessionStatus),
    **{svc: get_args(ServiceState) for svc in SERVICES},
}


def state_durations(events: pd.DataFrame | Any, column: str = "state", end: float | None = None,
                    ) -> pd.DataFrame:
    """Seconds each session spent in each value of ``column`` of the transition rows.

    ``column`` is ``state`` (the pipeline: listening / processing / complete), ``status`` (the lifecycle:
    created / active / paused / stopped) or a service (``stt``, ``llm``, ``tts``). Each transition's values
    hold until the session's next transition; a session ends at its ``session_stopped`` transition, or at
    ``end`` (default: the last event of the run) if it was still open. So each row adds up to the
    session's lifetime. One row per session, one column per value, in lifecycle order.

    >>> import pipesim
    >>> res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 2}}}, progress=False)
    >>> list(state_durations(res.events).columns)
    ['listening', 'processing', 'complete']
    """
    events = events if isinstance(events, pd.DataFrame) else events.events
    if column not in _STATE_ORDER:
        raise ValueError(f"column must be one of {', '.join(_STATE_ORDER)}, got {column!r}")
    stop = float(events["t"].max()) if end is None else float(end)
    tr = events.loc[events["seq"] >= 0, list(dict.fromkeys(["t", "session_id", "seq", "status", column]))]
    tr = tr.sort_values(["session_id", "seq"], kind="stable")
    following = tr.groupby("session_id", sort=False)["t"].shift(-1)
    following = following.fillna(stop).where(tr["status"] != "stopped", tr["t"])
    tr = tr.assign(duration=(following - tr["t"]).clip(lower=0))
    table = tr.pivot_table(index="session_id", columns=column, values="duration", aggfunc="sum", fill_value=0.0,
                           observed=True)
    known = [v for v in _STATE_ORDER[column] if v in table.columns or column == "state"]
    order = [*known, *sorted(c for c in table.columns if c not in known)]
    table = table.reindex(columns=order, fill_value=0.0)
    table.columns.name = column
    return table


#: Transition events that an analyst counts: Kafka timeouts, failed turns and barge-ins.
INCIDENTS = ("kafka_timeout", "turn_failed", "barge_in")


def incidents(events: pd.DataFrame | Any) -> pd.DataFrame:
    """Every Kafka timeout, failed turn and barge-in, one row each: ``t``, ``session_id``, ``turn_id``,
    ``event``, ``service`` (the one that timed out or failed) and ``error``.

    >>> import pipesim
    >>> res = pipesim.simulate("kafka_timeouts", progress=False)  # doctest: +SKIP
    >>> incidents(res.events)["event"].value_counts()              # doctest: +SKIP
    """
    events = events if isinstance(events, pd.DataFrame) else events.events
    rows = events[(events["seq"] >= 0) & events["event"].isin(INCIDENTS)]
    return rows[["t", "session_id", "turn_id", "event", "service", "error"]].reset_index(drop=True)


def incident_summary(events: pd.DataFrame | Any) -> dict[str, int]:
    """How often things went wrong in a run: ``kafka_timeouts``, ``retries`` (timeouts after which the
    request was sent again), ``failed_turns``, ``failed_by_kafka`` (turns that ran out of retries: the
    timeouts that were not retried), ``barge_ins``, and ``<service>_timeouts``.

    >>> ev = pd.DataFrame({"t": [1.0, 3.0, 3.0], "session_id": "s", "turn_id": 1, "seq": [5, 6, 7],
    ...                    "event": ["kafka_timeout", "kafka_timeout", "turn_failed"],
    ...                    "service": ["llm", "llm", "llm"], "error": None})
    >>> incident_summary(ev)["retries"], incident_summary(ev)["failed_by_kafka"]
    (1, 1)
    """
    events = events if isinstance(events, pd.DataFrame) else events.events
    tr = events[events["seq"] >= 0].sort_values(["session_id", "seq"], kind="stable")
    following = tr.groupby("session_id", sort=False)["event"].shift(-1)
    timeouts = tr["event"] == "kafka_timeout"
    gave_up = timeouts & (following == "turn_failed")
    out = {
        "kafka_timeouts": int(timeouts.sum()),
        "retries": int((timeouts & ~gave_up).sum()),
        "failed_turns": int((tr["event"] == "turn_failed").sum()),
        "failed_by_kafka": int(gave_up.sum()),
        "barge_ins": int((tr["event"] == "barge_in").sum()),
    }
    for svc in SERVICES:
        out[f"{svc}_timeouts"] = int((timeouts & (tr["service"] == svc)).sum())
    return out


def incident_counts(events: pd.DataFrame | Any, window: float = 10.0, start: float = 0.0,
                    end: float | None = None) -> pd.DataFrame:
    """Kafka timeouts (also per service), failed turns and barge-ins per ``window`` seconds.

    Indexed by every window's start from ``start`` to ``end`` (default: the last event), zeros included,
    so the result plots as a time series.

    >>> ev = pd.DataFrame({"t": [1.0, 2.0, 25.0], "session_id": "s", "turn_id": 1, "seq": [5, 6, 9],
    ...                    "event": ["kafka_timeout", "turn_failed", "barge_in"], "service": ["llm", "llm", None],
    ...                    "error": None})
    >>> incident_counts(ev, 10)[["kafka_timeouts", "failed_turns", "barge_ins"]].sum().tolist()
    [1, 1, 1]
    """
    events = events if isinstance(events, pd.DataFrame) else events.events
    rows = incidents(events)
    if end is None:  # a run without a single event still has its first window
        end = float(events["t"].max()) if len(events) else start
    stop = float(end)
    index = pd.Index(np.arange(start, max(stop, start + window), window, dtype=float), name="time_window")
    win = time_window(rows["t"], window, start=start)

    def per_window(mask: pd.Series) -> pd.Series:
        return win[mask].value_counts().reindex(index, fill_value=0).astype("int64")

    out = pd.DataFrame({
        "kafka_timeouts": per_window(rows["event"] == "kafka_timeout"),
        **{f"{svc}_timeouts": per_window((rows["event"] == "kafka_timeout") & (rows["service"] == svc))
           for svc in SERVICES},
        "failed_turns": per_window(rows["event"] == "turn_failed"),
        "barge_ins": per_window(rows["event"] == "barge_in"),
    }, index=index)
    return out


def failure_counts(events: pd.DataFrame | Any, window: float = 10.0, start: float = 0.0,
                   end: float | None = None) -> pd.DataFrame:
    """Failed turns per ``window`` seconds, one column per cause (:func:`failure_cause`), most frequent first.

    Indexed as :func:`incident_counts` (every window, zeros included); no column when no turn failed.

    >>> ev = pd.DataFrame({"t": [1.0, 2.0, 25.0], "session_id": "s", "turn_id": 1, "seq": [5, 6, 9],
    ...                    "event": "turn_failed", "service": "stt",
    ...                    "error": ["stt: low audio quality (0.3), re-prompting the user", "stt: service error",
    ...                              "stt: low audio quality (0.2), re-prompting the user"]})
    >>> failure_counts(ev, 10).to_dict("list")
    {'stt: low audio quality, re-prompting the user': [1, 0, 1], 'stt: service error': [1, 0, 0]}
    """
    events = events if isinstance(events, pd.DataFrame) else events.events
    index = incident_counts(events, window, start, end).index
    failed = incidents(events).query("event == 'turn_failed'")
    causes = failed["error"].map(failure_cause).rename("cause")
    table = (pd.crosstab(time_window(failed["t"], window, start=start), causes) if len(failed)
             else pd.DataFrame(index=index))
    order = sorted(table.columns, key=lambda cause: (-table[cause].sum(), cause))
    return table.reindex(index=index, columns=order, fill_value=0).astype("int64").rename_axis(columns=None)
