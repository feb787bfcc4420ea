"""Independent replications and parameter sweeps, with warm-up deletion and Student-t confidence intervals.

One run of a queue says little: its p95 can be off by tens of percent. :func:`replicate` runs a scenario
``n`` times with seeds derived from one base seed (``numpy.random.SeedSequence``: the replications are
independent, and the same base seed gives the same runs), measures each run (:func:`run_metrics`) and
summarises every metric as a mean across replications with a 95% confidence interval. :func:`sweep` does
the same at every point of a parameter grid, in parallel local processes or on a Dask cluster.

>>> reps = replicate({"sessions": {"arrivals": {"kind": "at_once", "count": 20}}}, n=3, workers=1,
...                  progress=False)
>>> reps.runs[["seed", "turns"]].shape
(3, 2)
>>> bool(reps.summary().loc["e2e_latency_p50", ["mean", "low", "high"]].notna().all())
True

The first-cut interface is still here for custom measurements: ``metrics=`` takes any function of a
:class:`~pipesim.results.Results` (e.g. :func:`queue_metrics`), and :func:`confidence_intervals` works on
any table of per-run numbers.

>>> from pipesim.theory import single_stage_scenario
>>> runs = replicate(single_stage_scenario(2.0, 0.25, 1, 200), n=3, metrics=queue_metrics("stt", warmup_s=5.0),
...                  workers=1, progress=False).runs
>>> list(runs.columns)
['seed', 'turns', 'mean_wait', 'prob_wait', 'utilisation', 'mean_queue']
>>> list(confidence_intervals(runs).columns)
['mean', 'sd', 'n', 'half_width', 'low', 'high']
"""

from __future__ import annotations

import functools
import hashlib
import html
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.stats

from pipesim import analysis
from pipesim.errors import ScenarioError
from pipesim.results import Results, progress_bar_class, simulate
from pipesim.scenario import Scenario, as_scenario
from pipesim.slo import collapsed_runs
from pipesim.vocabulary import SERVICES

Metrics = Callable[[Results], Mapping[str, Any]]
ScenarioLike = Scenario | str | Path | dict[str, Any]

#: The latency figures measured per run, and their statistics (defined beside the turns' columns).
FIGURES, QUANTILES = analysis.RUN_FIGURES, analysis.RUN_QUANTILES
#: A percentile is flagged when, in some replication, fewer turns than this lie beyond it (n (1 - q) < 10),
#: and a mean when fewer turns than this lie behind it: such a figure is set by a handful of turns.
MIN_TAIL_TURNS = 10
#: Printed tables convert these metrics (seconds) to milliseconds: every latency statistic.
_LATENCY_SUFFIXES = ("_mean", *(f"_{q}" for q in QUANTILES))


def replication_seeds(base_seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``base_seed`` (``SeedSequence(base_seed).spawn(n)``).

    >>> replication_seeds(42, 3) == replication_seeds(42, 3)
    True
    >>> len(set(replication_seeds(42, 100)))
    100
    """
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in np.random.SeedSequence(base_seed).spawn(n)]


# One run's measurements ---------------------------------------------------------------------------------
#: The stage of each latency figure (0: before STT, 1: STT, 2: LLM, 3: TTS, 4: the whole turn): a turn that
#: timed out at a stage is infinitely late in that stage's figures and every later one (``timeouts_infinite``).
_STAGE_OF = {"end_of_utterance_delay": 0, "stt_stage": 1, "stt_queue": 1, "transcription_delay": 1,
             "llm_stage": 2, "llm_queue": 2, "ttft": 2, "tts_stage": 3, "tts_queue": 3, "e2e_latency": 4}
_SERVICE_STAGE = {"stt": 1, "llm": 2, "tts": 3}


def _timeout_stage(turns: pd.DataFrame) -> np.ndarray:
    """Each turn's stage (:data:`_STAGE_OF`'s numbers) where it failed by timeout; NaN for one that did not."""
    service = turns["error"].astype("string").str.split(":", n=1).str[0]
    stage = service.map(_SERVICE_STAGE).astype("float").fillna(1).to_numpy()
    return np.where((analysis.failure_kind(turns) == "timeout").to_numpy(), stage, np.nan)


def _quantile(values: np.ndarray, q: float) -> float:
    """The linear-interpolation quantile (pandas' and numpy's default) of values some of which may be +inf:
    inf when the quantile touches an infinite value."""
    finite = values[np.isfinite(values)]
    if len(finite) == len(values):
        return float(np.quantile(values, q))
    stand_in = np.where(np.isfinite(values), values, 1e300)  # interpolating towards it lands past every finite
    result = float(np.quantile(stand_in, q))
    return math.inf if not len(finite) or result > finite.max() else result


def run_metrics(res: Results, warmup_s: float = 0.0, timeouts_infinite: bool = False) -> dict[str, Any]:
    """The per-run figures of a replication or a sweep row (seconds; counts; shares).

    Turns whose ``utterance_ended`` is before ``warmup_s`` are dropped (the run starts empty, which is not
    steady state). Rates are over the window in which the kept turns were offered: from ``warmup_s`` to
    the last ``utterance_ended`` (after it the system only drains).

    * ``turns``, ``complete``, ``failed``: kept turns, and those by outcome;
    * for each of :data:`FIGURES` (every stage, ``transcription_delay``, ``ttft``, ``e2e_latency``, and
      ``<service>_queue``, the wait for a worker): ``<figure>_mean``, ``_p50``, ``_p95``, ``_p99`` and
      ``_n``, the turns it rests on. With ``timeouts_infinite`` (the figures SLOs judge), a turn that failed
      by timeout counts as infinitely late in the figures of the stage where it timed out and every later
      one (``e2e_latency`` always); otherwise a figure is over the turns that have it;
    * ``goodput``: complete turns per second of the window;
    * ``kafka_timeouts_per_turn``: Kafka timeouts (every service) per kept turn: the attempts beyond one
      per request, the retry amplification;
    * ``failed_share``: failed / kept turns; ``timeout_failed_share``: those that failed by ``timeout``
      (:func:`pipesim.analysis.failure_kind`: what more workers buy back, unlike poor audio);
    * ``collapse_share``: :func:`pipesim.analysis.collapse_share`, the share of the turns that started in
      the run's last third that failed by timeout; above :data:`~pipesim.analysis.COLLAPSE_SHARE` the run
      *collapsed* (it did not recover from overload);
    * ``<service>_utilisation``: the worker time the kept turns brought (``<service>_busy``, stale work
      included) / (capacity x window): the fraction of time a worker is busy in steady state, rho of
      :class:`pipesim.theory.MMc`; above 1 the service is overloaded (the excess is done after the window);
    * ``<service>_stale_work_share``: of the service's worker time after ``warmup_s`` (to the run's last
      request), the share spent on stale requests, served after their turn gave up on them
      (:func:`analysis.stale_work_share`): near 1 when the service has collapsed;
    * ``turns_sha256``: the fingerprint of the run's turns table (:func:`turns_digest`: its columns and
      values, as ``pipesim run --out`` writes them to ``turns.parquet``): the same run gives the same
      fingerprint, whatever machine, Python or library versions ran it.

    >>> res = simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 5}}}, seed=1, progress=False)
    >>> m = run_metrics(res)
    >>> m["turns"] == len(res.turns), m["e2e_latency_p50"] == float(res.turns["e2e_latency"].quantile(0.5))
    (True, True)
    """
    turns = res.turns
    kept = turns[~(turns["utterance_ended"] < warmup_s)]  # a turn cut before it ended has no time: kept
    window = float(turns["utterance_ended"].max()) - warmup_s if len(turns) else math.nan
    out: dict[str, Any] = {"turns": len(kept), "complete": int((kept["outcome"] == "complete").sum()),
                           "failed": int((kept["outcome"] == "failed").sum())}
    timed_out_at = _timeout_stage(kept) if timeouts_infinite else None
    for figure in FIGURES:
        values = kept[figure].to_numpy(dtype=float, copy=True)
        if timed_out_at is not None:
            values[timed_out_at <= _STAGE_OF[figure]] = math.inf  # NaN (no timeout) compares False
        values = values[~np.isnan(values)]
        out[f"{figure}_mean"] = float(values.mean()) if len(values) else math.nan
        for name, q in QUANTILES.items():
            out[f"{figure}_{name}"] = _quantile(values, q) if len(values) else math.nan
        out[f"{figure}_n"] = len(values)
    out["goodput"] = out["complete"] / window if window > 0 else math.nan
    timeouts = sum(int(kept[f"{svc}_timeouts"].sum()) for svc in SERVICES)
    out["kafka_timeouts_per_turn"] = timeouts / len(kept) if len(kept) else math.nan
    out["failed_share"] = out["failed"] / len(kept) if len(kept) else math.nan
    out["timeout_failed_share"] = (float((analysis.failure_kind(kept) == "timeout").sum()) / len(kept)
                                   if len(kept) else math.nan)
    out["collapse_share"] = analysis.collapse_share(turns, warmup_s)
    for svc in SERVICES:
        capacity = getattr(res.scenario.services, svc).capacity
        out[f"{svc}_utilisation"] = float(kept[f"{svc}_busy"].sum()) / (capacity * window) if window > 0 else math.nan
    stale = analysis.stale_work_share(res.requests, start=warmup_s)
    for svc in SERVICES:
        out[f"{svc}_stale_work_share"] = float(stale[svc])
    out["turns_sha256"] = turns_digest(turns)
    return out


def turns_digest(turns: pd.DataFrame) -> str:
    """The fingerprint of a table (``turns_sha256``, of a run's turns): SHA-256 of its column names, their
    kinds and its values in one canonical byte form. It is a function of the table alone.

    Nothing else counts: not the index, not how pandas holds a column (``object``, ``str`` or categorical
    text; int32 or int64; float32 or float64), not the version of pandas, pyarrow, numpy or Python, so a
    run read back from its ``turns.parquet``, or made on another machine, has the same fingerprint. The
    bytes hashed, every number little-endian: ``pipesim-table/1``; the number of rows and of columns
    (int64); then per column its name and its kind (UTF-8, each after its length in bytes as an int64),
    and its values:

    * ``float``: IEEE 754 binary64, every NaN (missing) as ``0x7ff8000000000000``;
    * ``int`` and ``bool``: int64 (0 where missing), then how many are missing and their rows (int64);
    * ``string``, any other column (its values must be text or missing): each value's length in UTF-8
      bytes (int64, -1 where missing), then all their bytes.

    A column of anything else (dates, say) raises :class:`TypeError`.

    >>> table = pd.DataFrame({"id": ["a", None], "turn": [1, 2], "wait": [0.25, float("nan")]})
    >>> turns_digest(table.astype({"id": "category", "turn": "int32"})) == turns_digest(table)
    True
    >>> turns_digest(table.astype({"turn": "float64"})) == turns_digest(table)   # 1 and 1.0: other kinds
    False
    """
    digest = hashlib.sha256(b"pipesim-table/1")
    digest.update(_int64s([len(turns), len(turns.columns)]))
    for name, column in turns.items():
        if pd.api.types.is_float_dtype(column.dtype):
            kind, parts = "float", [_float_bytes(column)]
        elif pd.api.types.is_bool_dtype(column.dtype):
            kind, parts = "bool", _integer_bytes(name, column)
        elif pd.api.types.is_integer_dtype(column.dtype):
            kind, parts = "int", _integer_bytes(name, column)
        else:
            kind, parts = "string", _string_bytes(name, column)
        for text in (str(name), kind):
            encoded = text.encode()
            digest.update(_int64s([len(encoded)]))
            digest.update(encoded)
        for part in parts:
            digest.update(part)
    return digest.hexdigest()


def _int64s(values: Any) -> bytes:
    return np.asarray(values, dtype="<i8").tobytes()


def _float_bytes(column: pd.Series) -> bytes:
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    bits = values.astype("<f8").view("<u8")  # a copy: the frame is not touched
    bits[np.isnan(values)] = 0x7FF8000000000000  # NaNs differ in sign and payload bits, missing values in none
    return bits.tobytes()


def _integer_bytes(name: Any, column: pd.Series) -> list[bytes]:
    if pd.api.types.is_unsigned_integer_dtype(column.dtype) and len(column) and column.max() > np.iinfo(np.int64).max:
        raise TypeError(f"turns_digest: column {name!r} holds integers beyond int64")
    missing = np.flatnonzero(column.isna().to_numpy())
    return [column.to_numpy(dtype="<i8", na_value=0).tobytes(), _int64s([len(missing)]), _int64s(missing)]


def _string_bytes(name: Any, column: pd.Series) -> list[bytes | memoryview]:
    try:  # Arrow's layout of a string array is the canonical form: the offsets of the values, then their bytes
        text = pa.array(column.astype(object).to_numpy(), type=pa.large_string(), from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        raise TypeError(f"turns_digest: column {name!r} ({column.dtype}) holds values that are neither numbers "
                        f"nor text") from None
    if not len(text):
        return []
    offsets = np.frombuffer(text.buffers()[1], dtype="<i8", count=len(text) + 1)
    lengths = np.diff(offsets)
    lengths[text.is_null().to_numpy(zero_copy_only=False)] = -1
    data = text.buffers()[2]
    return [lengths.astype("<i8").tobytes(), b"" if data is None else memoryview(data)[offsets[0]:offsets[-1]]]


def queue_metrics(service: str = "stt", warmup_s: float = 0.0) -> Metrics:
    """A metrics function for :func:`replicate`: how one service queued, after a warm-up.

    Turns that began (``speech_start``) before ``warmup_s`` are dropped (the run starts empty, which is
    not steady state). Of the rest, those that reached ``service``: ``mean_wait`` (mean ``<service>_queue``,
    s) and ``prob_wait`` (share with a wait > 0). Over the window from ``warmup_s`` to the last hand-off to
    STT (``utterance_ended``; after it the system only drains): ``utilisation`` (time-average busy
    workers / capacity) and ``mean_queue`` (time-average number waiting), from the services table.
    The function is picklable, so replications may run in other processes.
    """
    return functools.partial(_queue_metrics, service, warmup_s)


def _queue_metrics(service: str, warmup_s: float, res: Results) -> dict[str, float]:
    turns = res.turns[res.turns["speech_start"] >= warmup_s]
    waits = turns[f"{service}_queue"].dropna()
    end = float(turns["utterance_ended"].max())
    if not len(waits) or not end > warmup_s:
        raise ValueError(f"no turn reached {service} after the warm-up of {warmup_s} s")
    window = analysis.utilisation(res.services, window=end - warmup_s, start=warmup_s, end=end)
    row = window[window["service"] == service].iloc[0]
    return {"turns": len(waits), "mean_wait": float(waits.mean()), "prob_wait": float((waits > 0).mean()),
            "utilisation": float(row["utilisation"]), "mean_queue": float(row["queued"])}


# Confidence intervals -----------------------------------------------------------------------------------
def confidence_intervals(runs: pd.DataFrame, confidence: float = 0.95,
                         columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and two-sided Student-t confidence interval of each metric over the runs (one row each):
    ``mean``, ``sd``, ``n``, ``half_width``, ``low``, ``high``. For ``m`` simultaneous comparisons
    (Bonferroni) pass ``confidence = 1 - alpha / m``.

    >>> runs = pd.DataFrame({"wait": [1.0, 2.0, 3.0]})
    >>> confidence_intervals(runs).loc["wait", ["mean", "low", "high"]].round(3).tolist()
    [2.0, -0.484, 4.484]
    """
    _check_confidence(confidence)
    columns = [c for c in runs.columns if c != "seed"] if columns is None else list(columns)
    n = len(runs)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 runs, got {n}")
    t = float(scipy.stats.t.ppf(1 - (1 - confidence) / 2, n - 1))
    mean, sd = runs[columns].mean(), runs[columns].std(ddof=1)
    half = t * sd / math.sqrt(n)
    return pd.DataFrame({"mean": mean, "sd": sd, "n": n, "half_width": half, "low": mean - half,
                         "high": mean + half})


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _figure_and_stat(metric: str) -> tuple[str, str] | None:
    for figure in FIGURES:
        stat = metric.removeprefix(f"{figure}_")
        if stat != metric and (stat == "mean" or stat in QUANTILES):
            return figure, stat
    return None


def summarise(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Each numeric metric of per-run rows (one per replication): its mean across replications, the
    Student-t confidence interval (``low``, ``high``, ``half_width``), how many replications gave it a
    value, the turns behind it (summed over replications) and a ``warning`` ('' when none).

    A percentile ``q`` is flagged when, in some replication, fewer than :data:`MIN_TAIL_TURNS` turns lie
    beyond it (``n (1 - q) < 10``: p99 needs 1,000 turns per replication), a mean when fewer than that
    lie behind it, and every metric when there is only one replication (no interval).

    >>> runs = pd.DataFrame({"seed": [1, 2], "e2e_latency_p99": [1.5, 1.7], "e2e_latency_n": [5000, 500]})
    >>> s = summarise(runs)
    >>> print(s.loc["e2e_latency_p99", "turns"], "|", s.loc["e2e_latency_p99", "warning"])
    5500 | only 5 turns beyond p99 in a replication
    """
    _check_confidence(confidence)
    skip = {"seed", "replication"}
    metrics = [c for c in runs.columns if c not in skip and not c.endswith("_n")
               and pd.api.types.is_numeric_dtype(runs[c])]
    rows = []
    for metric in metrics:
        values = runs[metric].dropna().astype(float)
        k = len(values)
        mean = float(values.mean()) if k else math.nan
        half = (float(scipy.stats.t.ppf(1 - (1 - confidence) / 2, k - 1)) * float(values.std(ddof=1)) / math.sqrt(k)
                if k > 1 else math.nan)
        parsed = _figure_and_stat(metric)
        count_column = f"{parsed[0]}_n" if parsed and f"{parsed[0]}_n" in runs else "turns" if "turns" in runs else None
        counts = runs[count_column] if count_column else None
        warning = ""
        if k < 2:
            warning = "one replication: no interval" if k == 1 else "no value in any replication"
        elif parsed and counts is not None:
            stat = parsed[1]
            if stat == "mean" and counts.min() < MIN_TAIL_TURNS:
                warning = f"only {int(counts.min())} turns in a replication"
            elif stat in QUANTILES:
                beyond = int(math.floor(counts.min() * (1 - QUANTILES[stat]) + 1e-9))
                if beyond < MIN_TAIL_TURNS:
                    warning = f"only {beyond} turn{'' if beyond == 1 else 's'} beyond {stat} in a replication"
        rows.append({"metric": metric, "mean": mean, "low": mean - half, "high": mean + half, "half_width": half,
                     "replications": k, "turns": int(counts.sum()) if counts is not None else pd.NA,
                     "warning": warning})
    columns = ["metric", "mean", "low", "high", "half_width", "replications", "turns", "warning"]
    return pd.DataFrame(rows, columns=columns).set_index("metric")


def _is_latency(metric: str) -> bool:
    return _figure_and_stat(metric) is not None


def _format(mean: float, half: float, ms: bool) -> str:
    if math.isnan(mean):
        return "-"
    scale = 1000.0 if ms else 1.0
    digits = 1 if ms or abs(mean) >= 100 else 3
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half * scale:.{digits}f}"


def _cell(row: pd.Series, ms: bool) -> str:
    """A figure as printed: mean ± half-width, then ``!`` when :func:`summarise` warns and ``?`` when the
    interval is wider than the mean (the runs disagree: no answer to read)."""
    marks = ("!" if row["warning"] else "") + ("?" if row["half_width"] > abs(row["mean"]) else "")
    return _format(row["mean"], row["half_width"], ms) + (f" {marks}" if marks else "")


def format_summary(summary: pd.DataFrame) -> str:
    """A summary (:func:`summarise`) as text: latencies in milliseconds (mean ± half-width of the 95%
    interval), one row per figure; then the other metrics; then one line per warning, marked ``!``. A
    figure whose interval is wider than its mean is marked ``?`` (:func:`regime_notes` lists them).
    """
    lines = []
    latency = {m: _figure_and_stat(m) for m in summary.index if _is_latency(m)}
    figures = list(dict.fromkeys(f for f, _ in latency.values()))
    if figures:
        stats = ["mean", *QUANTILES]
        table = pd.DataFrame(index=figures, columns=pd.Index([*stats, "turns"], name="ms"), dtype=object)
        for metric, (figure, stat) in latency.items():
            row = summary.loc[metric]
            table.loc[figure, stat] = _cell(row, ms=True)
            table.loc[figure, "turns"] = row["turns"]
        lines.append(table.fillna("-").to_string())
    others = [m for m in summary.index if m not in latency]
    if others:
        rest = pd.DataFrame({"per replication": [_cell(summary.loc[m], ms=False) for m in others]}, index=others)
        lines.append(rest.to_string())
    warned = summary[summary["warning"] != ""]
    for why, group in warned.groupby("warning", sort=False):
        names = "every figure" if len(group) == len(summary) else ", ".join(group.index)
        lines.append(f"! {why}: {names}")
    if warned["warning"].str.startswith("only ").any():
        lines.append(f"  (! marks a percentile with fewer than {MIN_TAIL_TURNS} turns beyond it, or a mean with fewer "
                     f"than {MIN_TAIL_TURNS} turns, in some replication: simulate more sessions or a longer run)")
    return "\n".join(lines)


def regime_notes(runs: pd.DataFrame, summary: pd.DataFrame,
                 collapse_threshold: float = analysis.COLLAPSE_SHARE) -> list[str]:
    """Lines saying how many replications collapsed (:func:`pipesim.analysis.collapse_share` above
    ``collapse_threshold``) and which figures' intervals are wider than their means: the runs disagree, and
    the mean of two regimes is the answer of neither.

    >>> runs = pd.DataFrame({"collapse_share": [0.0, 0.99, 0.0], "goodput": [4.0, 0.1, 4.1]})
    >>> print("\\n".join(regime_notes(runs, summarise(runs))))   # doctest: +ELLIPSIS
    collapse: 1 of 3 replications collapsed (more than 50% of the turns ...): the runs split into two regimes; ...
    ? the runs disagree (the interval is wider than the mean: read no answer from it): collapse_share, goodput
    """
    notes = []
    if "collapse_share" in runs:
        collapsed = int(collapsed_runs(runs, collapse_threshold).sum())
        split = (": the runs split into two regimes; a mean of both describes neither, so each is summarised apart"
                 if 0 < collapsed < len(runs) else "")
        notes.append(f"collapse: {collapsed} of {len(runs)} replications collapsed "
                     f"({analysis.collapse_criterion(collapse_threshold)}){split}")
    wide = summary.index[summary["half_width"] > summary["mean"].abs()]
    if len(wide):
        notes.append(f"? the runs disagree (the interval is wider than the mean: read no answer from it): "
                     f"{', '.join(wide)}")
    return notes


# Running many simulations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTask:
    """One simulation to run somewhere: a picklable function of nothing but its fields."""

    scenario: Scenario
    seed: int
    warmup_s: float
    until: float | None
    metrics: Metrics | None


def _run_task(task: RunTask) -> dict[str, Any]:
    res = simulate(task.scenario, seed=task.seed, until=task.until, progress=False)
    return dict(run_metrics(res, task.warmup_s) if task.metrics is None else task.metrics(res))


def execute_runs(tasks: list[RunTask], workers: int | None, client: Any, progress: bool | None,
             desc: str) -> list[dict[str, Any]]:
    """Run every task; results in task order, whoever ran them and whenever they finished."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    bar = (None if progress is False else
           progress_bar_class()(total=len(tasks), desc=desc, unit="run",
                                 disable=None if progress is None else not progress))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    try:
        if client is not None:
            from distributed import as_completed

            futures = client.map(_run_task, tasks, pure=False)
            for _ in as_completed(futures):
                if bar is not None:
                    bar.update(1)
            results = client.gather(futures)
        else:
            workers = min(workers or os.cpu_count() or 1, len(tasks))
            if workers <= 1:  # in this process: no start-up cost, and any metrics function works
                for i, task in enumerate(tasks):
                    results[i] = _run_task(task)
                    if bar is not None:
                        bar.update(1)
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    index = {pool.submit(_run_task, task): i for i, task in enumerate(tasks)}
                    pending = set(index)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            results[index[future]] = future.result()  # raises the first failure
                            if bar is not None:
                                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return list(results)  # type: ignore[arg-type]


# Replications -------------------------------------------------------------------------------------------
class Replications:
    """``n`` replications of one scenario: ``runs`` (one row per replication: ``seed`` and the figures of
    :func:`run_metrics`, seconds) and :meth:`summary` (means with confidence intervals). ``print()`` it for
    the table in milliseconds."""

    def __init__(self, scenario: Scenario, base_seed: int, warmup_s: float, runs: pd.DataFrame) -> None:
        self.scenario, self.base_seed, self.warmup_s, self.runs = scenario, base_seed, warmup_s, runs

    def summary(self, confidence: float = 0.95) -> pd.DataFrame:
        """Each metric's mean across replications, its Student-t interval, the turns behind it and a
        warning where a percentile rests on too few turns (see :func:`summarise`). Seconds."""
        return summarise(self.runs, confidence)

    def regimes(self, collapse_threshold: float = analysis.COLLAPSE_SHARE) -> dict[str, pd.DataFrame]:
        """The runs by regime when they split: {"collapsed": runs, "recovered": runs} (collapsed: their
        ``collapse_share`` above ``collapse_threshold``); {} when every run is in the same regime.

        >>> runs = pd.DataFrame({"seed": [1, 2, 3], "collapse_share": [0.0, 0.99, 0.0]})
        >>> {name: len(part) for name, part in Replications(Scenario(), 1, 0.0, runs).regimes().items()}
        {'collapsed': 1, 'recovered': 2}
        """
        if "collapse_share" not in self.runs:
            return {}
        collapsed = collapsed_runs(self.runs, collapse_threshold)
        if collapsed.all() or not collapsed.any():
            return {}
        return {"collapsed": self.runs[collapsed], "recovered": self.runs[~collapsed]}

    def _heading(self) -> str:
        across = "the runs of each regime" if self.regimes() else "them"
        return (f"scenario {self.scenario.name}: {len(self.runs)} replications (seeds from {self.base_seed}), "
                f"warm-up {self.warmup_s:g} s; mean ± half-width of the 95% Student-t interval across {across}")

    def __str__(self) -> str:
        regimes = self.regimes()
        if not regimes:
            summary = self.summary()
            return "\n".join([self._heading(), format_summary(summary), *regime_notes(self.runs, summary)])
        # Two regimes: a mean across both is the answer of neither (its interval is wider than itself), so
        # each regime has its own table, and the collapse, which is the answer, comes first.
        lines = [self._heading(), regime_notes(self.runs, self.summary())[0]]
        for name, runs in regimes.items():
            summary = summarise(runs)
            which = ", ".join(str(i + 1) for i in np.flatnonzero(self.runs.index.isin(runs.index)))
            lines += [f"{name}: {len(runs)} of {len(self.runs)} replications ({which} in seed order)",
                      format_summary(summary), *regime_notes(runs, summary)[1:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Replications {self.scenario.name!r} n={len(self.runs)} base_seed={self.base_seed}>"

    def _repr_html_(self) -> str:
        def table(runs: pd.DataFrame) -> str:
            shown = summarise(runs)
            latency = [m for m in shown.index if _is_latency(m)]
            shown.loc[latency, ["mean", "low", "high", "half_width"]] *= 1000
            shown.index = [f"{m} (ms)" if m in latency else m for m in shown.index]
            return shown.to_html(float_format=lambda v: f"{v:.4g}")

        heading = f"<b>{html.escape(self._heading())}</b>"
        regimes = self.regimes()
        if not regimes:
            return heading + table(self.runs)
        collapse = html.escape(regime_notes(self.runs, self.summary())[0])
        return heading + f"<p>{collapse}</p>" + "".join(
            f"<p><b>{name}</b>: {len(runs)} of {len(self.runs)} replications</p>{table(runs)}"
            for name, runs in regimes.items())


def replicate(scenario: ScenarioLike, n: int = 20, warmup_s: float = 0.0, seed: int | None = None,
              workers: int | None = None, progress: bool | None = None, *, metrics: Metrics | None = None,
              until: float | None = None) -> Replications:
    """Run ``scenario`` ``n`` times, with seeds derived from ``seed`` (default: the scenario's) by
    :func:`replication_seeds`, and measure each run after a warm-up of ``warmup_s`` seconds.

    ``workers`` processes run them (default: one per CPU; 1 runs them here); ``progress``: None shows a
    bar on a terminal or in Jupyter. ``metrics`` replaces :func:`run_metrics` with any function of a
    :class:`~pipesim.results.Results` returning a mapping (picklable, e.g. module-level, when
    ``workers`` > 1). ``until`` stops each run at that simulated time.

    >>> reps = replicate("baseline", n=10, warmup_s=30)   # doctest: +SKIP
    >>> print(reps)                                        # doctest: +SKIP
    >>> reps.summary().loc["e2e_latency_p95", ["mean", "low", "high"]]   # doctest: +SKIP
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    scn = as_scenario(scenario)
    base = scn.seed if seed is None else seed
    seeds = replication_seeds(base, n)
    rows = execute_runs([RunTask(scn, s, warmup_s, until, metrics) for s in seeds], workers, None, progress,
                    f"replicating {scn.name}")
    return Replications(scn, base, warmup_s, pd.DataFrame([{"seed": s, **row} for s, row in zip(seeds, rows,
                                                                                                strict=True)]))


# Sweeps -------------------------------------------------------------------------------------------------
def _label(value: Any) -> Any:
    """A grid value as an index label (lists and mappings as their JSON)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


class SweepResult:
    """A sweep: ``runs`` (one row per run: the parameters, ``replication``, ``seed``, the figures of
    :func:`run_metrics`, seconds) and :meth:`summary` (per grid point, means with confidence intervals).
    ``print()`` it for a table in milliseconds."""

    #: The figures the printed table shows per grid point.
    SHOWN = ("e2e_latency_p50", "e2e_latency_p95", "e2e_latency_p99", "goodput", "kafka_timeouts_per_turn",
             "llm_utilisation")

    def __init__(self, scenario: Scenario, params: list[str], base_seed: int, replications: int,
                 warmup_s: float, runs: pd.DataFrame) -> None:
        self.scenario, self.params, self.base_seed = scenario, params, base_seed
        self.replications, self.warmup_s, self.runs = replications, warmup_s, runs

    def points(self) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
        """(parameter values, their runs) for each grid point, in grid order."""
        n = self.replications
        return [(tuple(self.runs.iloc[i][p] for p in self.params), self.runs.iloc[i:i + n])
                for i in range(0, len(self.runs), n)]

    def summary(self, confidence: float = 0.95) -> pd.DataFrame:
        """Per grid point and metric (index: the parameters, then ``metric``): mean across replications,
        Student-t interval, turns behind it and a warning (see :func:`summarise`). Seconds.

        >>> result.summary().xs("e2e_latency_p95", level="metric")   # doctest: +SKIP
        """
        parts = []
        for values, runs in self.points():
            part = summarise(runs.drop(columns=self.params), confidence)
            part.index = pd.MultiIndex.from_tuples([(*map(_label, values), m) for m in part.index],
                                                   names=[*self.params, "metric"])
            parts.append(part)
        return pd.concat(parts)

    def table(self, metrics: Sequence[str] = SHOWN, confidence: float = 0.95) -> pd.DataFrame:
        """One row per grid point, one text column per metric: mean ± half-width (latencies in ms), ``!``
        where :func:`summarise` warns; then ``collapsed``, how many of its replications collapsed (see
        :func:`regime_notes`)."""
        summary = self.summary(confidence)
        collapsed = [int((runs["collapse_share"] > analysis.COLLAPSE_SHARE).sum()) if "collapse_share" in runs
                     else None for _, runs in self.points()]
        rows = {}
        for i, (key, part) in enumerate(summary.groupby(level=list(range(len(self.params))), sort=False)):
            part = part.droplevel(list(range(len(self.params))))
            rows[key] = {(f"{m}_ms" if _is_latency(m) else m):
                         _format(part.loc[m, "mean"], part.loc[m, "half_width"], ms=_is_latency(m))
                         + (" !" if part.loc[m, "warning"] else "") for m in metrics}
            if collapsed[i] is not None:
                rows[key]["collapsed"] = f"{collapsed[i]}/{self.replications}"
        out = pd.DataFrame.from_dict(rows, orient="index")
        out.index = pd.MultiIndex.from_tuples(
            [k if isinstance(k, tuple) else (k,) for k in out.index], names=self.params)
        return out

    def _heading(self) -> str:
        return (f"sweep of {self.scenario.name}: {len(self.runs) // self.replications} grid points x "
                f"{self.replications} replications (seeds from {self.base_seed}, the same at every point), "
                f"warm-up {self.warmup_s:g} s; mean ± half-width of the 95% Student-t interval")

    def __str__(self) -> str:
        summary = self.summary()
        warned = summary[summary["warning"] != ""].reset_index()
        points = len(self.runs) // self.replications
        notes = [f"! {metric} at {len(group)} of {points} grid points: "
                 + (group["warning"].iloc[0] if group["warning"].nunique() == 1 else
                    f"fewer than {MIN_TAIL_TURNS} turns beyond {metric.rsplit('_', 1)[1]} in a replication")
                 for metric, group in warned[warned["metric"].isin(self.SHOWN)].groupby("metric", sort=False)]
        if notes:
            notes.append(f"  (! marks a percentile with fewer than {MIN_TAIL_TURNS} turns beyond it in some "
                         "replication: simulate more sessions or a longer run; summary() has every warning)")
        if "collapse_share" in self.runs and (self.runs["collapse_share"] > analysis.COLLAPSE_SHARE).any():
            notes.append(f"collapsed: replications in which {analysis.collapse_criterion()}; where some did and "
                         "some did not, the runs split into two regimes and their mean describes neither")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            return "\n".join([self._heading(), self.table().to_string(), *notes])

    def __repr__(self) -> str:
        return (f"<SweepResult {self.scenario.name!r} {', '.join(self.params)}: {len(self.runs)} runs, "
                f"{self.replications} replications>")

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(self._heading())}</b>{self.table().to_html()}"


def sweep(scenario: ScenarioLike, grid: Mapping[str, Sequence[Any]], replications: int = 10,
          warmup_s: float = 0.0, seed: int | None = None, workers: int | None = None, client: Any = None,
          progress: bool | None = None, until: float | None = None) -> SweepResult:
    """Run ``scenario`` at every point of ``grid`` (dotted field path -> values; the full product, the
    first path outermost), ``replications`` times each, and measure every run as :func:`replicate` does.

    **Common random numbers, on purpose**: replication ``r`` uses the same seed at every grid point
    (``replication_seeds(seed, replications)[r]``), so two points differ by their parameters, not by
    their luck, and the difference between them is measured far more precisely than either alone (the
    intervals of one point are still those of independent replications).

    Runs go to ``workers`` local processes (default: one per CPU; 1 runs them here) or, with ``client``
    (a ``distributed.Client``), to a Dask cluster whose workers have pipesim installed. Either way the
    results are the same, row for row: row ``k`` is ``pipesim run SCENARIO --set PATH=VALUE... --seed
    SEED`` for that row's values and seed (its ``turns_sha256`` is the fingerprint of that run's turns).
    A misspelled path raises :class:`~pipesim.errors.ScenarioError` with "did you mean". In a script, call
    it under ``if __name__ == "__main__":`` where processes are spawned, not forked (macOS, Windows).

    >>> result = sweep({"sessions": {"arrivals": {"kind": "at_once", "count": 10}}},
    ...                {"services.llm.capacity": [1, 4]}, replications=2, workers=1, progress=False)
    >>> result.runs[["services.llm.capacity", "replication"]].values.tolist()
    [[1, 0], [1, 1], [4, 0], [4, 1]]
    >>> result.runs["seed"].tolist()[:2] == result.runs["seed"].tolist()[2:]   # common random numbers
    True
    """
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
        raise ValueError(f"replications must be an integer >= 1, got {replications!r}")
    scn = as_scenario(scenario)
    params = list(grid)
    if not params:
        raise ValueError("the grid is empty: give at least one field path and its values")
    for path, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not len(values):
            raise ScenarioError([f"{path}: give a non-empty list of values to sweep, got {values!r}"])
    points = list(itertools.product(*grid.values()))
    # Every point is validated before anything runs: a bad path or value costs nothing.
    scenarios = [scn.override(dict(zip(params, point, strict=True))) for point in points]
    base = scn.seed if seed is None else seed
    seeds = replication_seeds(base, replications)
    tasks = [RunTask(s, seeds[r], warmup_s, until, None) for s in scenarios for r in range(replications)]
    rows = execute_runs(tasks, workers, client, progress, f"sweep of {scn.name}")
    records = [{**dict(zip(params, point, strict=True)), "replication": r, "seed": seeds[r],
                **rows[i * replications + r]}
               for i, point in enumerate(points) for r in range(replications)]
    return SweepResult(scn, params, base, replications, warmup_s, pd.DataFrame(records))
