"""Independent replications of a scenario, with warm-up deletion and Student-t confidence intervals.

One run of a queue says little: its mean wait can be off by tens of percent. ``replicate`` runs a
scenario ``n`` times with seeds derived from one base seed (``numpy.random.SeedSequence``, so the
replications are independent and the same base seed gives the same runs), applies a metrics function to
each run, and ``confidence_intervals`` turns the per-run figures into a mean and a confidence interval.

>>> from pipesim.theory import single_stage_scenario
>>> runs = replicate(single_stage_scenario(2.0, 0.25, 1, 200), queue_metrics("stt", warmup_s=5.0), n=3)
>>> list(runs.columns)
['seed', 'turns', 'mean_wait', 'prob_wait', 'utilisation', 'mean_queue']
>>> ci = confidence_intervals(runs)
>>> list(ci.columns)
['mean', 'sd', 'n', 'half_width', 'low', 'high']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from pipesim import analysis
from pipesim.results import Results, simulate
from pipesim.scenario import Scenario, as_scenario

Metrics = Callable[[Results], Mapping[str, float]]


def replication_seeds(base_seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``base_seed`` (``SeedSequence(base_seed).spawn(n)``).

    >>> replication_seeds(42, 3) == replication_seeds(42, 3)
    True
    >>> len(set(replication_seeds(42, 100)))
    100
    """
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in np.random.SeedSequence(base_seed).spawn(n)]


def replicate(scenario: Scenario | str | Path | dict[str, Any], metrics: Metrics, n: int = 10,
              seed: int | None = None) -> pd.DataFrame:
    """Run ``scenario`` ``n`` times, seeds derived from ``seed`` (default: the scenario's), and return one
    row per run: ``seed``, then whatever ``metrics(results)`` returns (a mapping of name to number).

    Warm-up deletion is the metrics function's business (see :func:`queue_metrics`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    scn = as_scenario(scenario)
    base = scn.seed if seed is None else seed
    rows = []
    for s in replication_seeds(base, n):
        res = simulate(scn, seed=s, progress=False)
        rows.append({"seed": s, **metrics(res)})
    return pd.DataFrame(rows)


def queue_metrics(service: str = "stt", warmup_s: float = 0.0) -> Metrics:
    """A metrics function for :func:`replicate`: how one service queued, after a warm-up.

    Turns that began (``speech_start``) before ``warmup_s`` are dropped (the run starts empty, which is
    not steady state). Of the rest, those that reached ``service``: ``mean_wait`` (mean ``<service>_queue``,
    s) and ``prob_wait`` (share with a wait > 0). Over the window from ``warmup_s`` to the last hand-off to
    STT (``utterance_ended``; after it the system only drains): ``utilisation`` (time-average busy
    workers / capacity) and ``mean_queue`` (time-average number waiting), from the services table.
    """
    column = f"{service}_queue"

    def metrics(res: Results) -> dict[str, float]:
        turns = res.turns[res.turns["speech_start"] >= warmup_s]
        waits = turns[column].dropna()
        end = float(turns["utterance_ended"].max())
        if not len(waits) or not end > warmup_s:
            raise ValueError(f"no turn reached {service} after the warm-up of {warmup_s} s")
        window = analysis.utilisation(res.services, window=end - warmup_s, start=warmup_s, end=end)
        row = window[window["service"] == service].iloc[0]
        return {"turns": len(waits), "mean_wait": float(waits.mean()), "prob_wait": float((waits > 0).mean()),
                "utilisation": float(row["utilisation"]), "mean_queue": float(row["queued"])}

    return metrics


def confidence_intervals(runs: pd.DataFrame, confidence: float = 0.95,
                         columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and two-sided Student-t confidence interval of each metric over the runs (one row each):
    ``mean``, ``sd``, ``n``, ``half_width``, ``low``, ``high``. For ``m`` simultaneous comparisons
    (Bonferroni) pass ``confidence = 1 - alpha / m``.

    >>> runs = pd.DataFrame({"wait": [1.0, 2.0, 3.0]})
    >>> confidence_intervals(runs).loc["wait", ["mean", "low", "high"]].round(3).tolist()
    [2.0, -0.484, 4.484]
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    columns = [c for c in runs.columns if c != "seed"] if columns is None else list(columns)
    n = len(runs)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 runs, got {n}")
    t = float(scipy.stats.t.ppf(1 - (1 - confidence) / 2, n - 1))
    mean, sd = runs[columns].mean(), runs[columns].std(ddof=1)
    half = t * sd / math.sqrt(n)
    return pd.DataFrame({"mean": mean, "sd": sd, "n": n, "half_width": half, "low": mean - half,
                         "high": mean + half})
