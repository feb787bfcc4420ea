"""Service-level objectives: one small language and one evaluator (``pipesim check`` is :mod:`pipesim.gate`).

An SLO reads ``FIGURE OP VALUE``: a per-run figure (the names of :func:`pipesim.replications.run_metrics`),
one of ``<=``, ``<``, ``>=``, ``>``, and a bound; times take a unit, ``ms`` or ``s``; shares and rates none.

>>> parse_slo("ttft_p99 < 900ms")
SLO('ttft_p99 < 900ms')
>>> parse_slo("e2e_latency_p95 <= 1.5s").bound
1.5
>>> parse_slo("e2e_latncy_p95 <= 1.5s")   # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipesim.errors.SLOError: SLO 'e2e_latncy_p95 <= 1.5s': unknown figure 'e2e_latncy_p95' (closest: e2e_latency_p95, ...)

**How an SLO is judged.** From independent replications (seeds of
:func:`~pipesim.replications.replication_seeds`), by the 95% Student-t interval of the figure's mean across
runs: *met* when the whole interval is on the right side of the bound, *violated* when it is wholly on the
wrong side, *undecided* otherwise. :func:`pipesim.gate.check` adds replications until every SLO is decided
or it reaches ``max_replications``.

**Failed turns are not fast turns.** A percentile over completed turns improves when overload fails the slow
ones. So the latency figures an SLO judges (:func:`pipesim.gate.slo_metrics`) count a turn that failed by
``timeout`` (Kafka timed out past the retry budget: :data:`pipesim.analysis.FAILURE_KINDS`) as infinitely
late in the figures of the stage where it timed out and of every later stage (``e2e_latency`` always). A
run where more than 5% of turns timed out has an infinite p95, and a configuration with such a run violates
an upper bound on it. Turns that failed by poor audio (the user is re-prompted) or by a service error are
left out of the figures they never reached: no worker buys them back; ``failed_share`` (every cause) and
``timeout_failed_share`` judge them.

**Collapse is a verdict, not noise.** Past capacity, runs of one configuration may split: some recover,
some stay overloaded. A run *collapsed* when more than ``collapse_share`` (default
:data:`pipesim.analysis.COLLAPSE_SHARE`, 50%) of the turns that started in the last third of it (after the
warm-up) failed by timeout (:func:`pipesim.analysis.collapse_share`); by default a configuration with a
collapsed run violates every SLO, whatever its means say.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from pipesim.analysis import COLLAPSE_SHARE, RUN_FIGURES, RUN_QUANTILES
from pipesim.errors import SLOError
from pipesim.vocabulary import SERVICES

#: Units of the time figures, in seconds.
TIME_UNITS = {"ms": 0.001, "s": 1.0}
OPERATORS = ("<=", "<", ">=", ">")
#: Every figure an SLO may name, and whether it is a time (seconds: it takes a unit).
SLO_FIGURES: dict[str, bool] = {
    **{f"{figure}_{stat}": True for figure in RUN_FIGURES for stat in ("mean", *RUN_QUANTILES)},
    "goodput": False, "kafka_timeouts_per_turn": False, "failed_share": False, "timeout_failed_share": False,
    **{f"{svc}_utilisation": False for svc in SERVICES},
}
VERDICTS = ("met", "violated", "undecided")
_SLO_TEXT = re.compile(r"\s*(?P<figure>[^<>=!\s]*)\s*(?P<op><=|>=|=<|=>|==|!=|<|>|=)\s*(?P<value>.*?)\s*")
_NUMBER = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z%µ]*)")
_EXAMPLE = "e.g. 'e2e_latency_p95 <= 1.5s'"


# The language ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SLO:
    """One objective: ``figure`` ``op`` ``bound`` (seconds for a time), with ``value`` and ``unit`` as written.

    >>> slo = SLO("stt_queue_mean", "<=", 50.0, "ms")
    >>> slo.bound, slo.upper, str(slo)
    (0.05, True, 'stt_queue_mean <= 50ms')
    """

    figure: str
    op: str
    value: float
    unit: str = ""

    @property
    def bound(self) -> float:
        """The bound in the figure's own unit (seconds for a time)."""
        return self.value * TIME_UNITS[self.unit] if self.unit else self.value

    @property
    def upper(self) -> bool:
        """True for an upper bound (``<=``, ``<``): the figure must stay below it."""
        return self.op in ("<=", "<")

    def __str__(self) -> str:
        return f"{self.figure} {self.op} {self.value:g}{self.unit}"

    def __repr__(self) -> str:
        return f"SLO({str(self)!r})"


def _quoted(text: str) -> str:
    """The SLO as the user wrote it, on one line (control characters escaped), cut to 80 characters."""
    shown = repr(text)[1:-1] if not text.isprintable() else text
    return f"'{shown if len(shown) <= 80 else shown[:77] + '...'}'"


def parse_slo(text: Any) -> SLO:
    """An SLO from its text, ``FIGURE OP VALUE``; anything else raises :class:`~pipesim.errors.SLOError`,
    one line saying what is wrong (unknown figures get the closest names).

    >>> parse_slo("goodput >= 2.8")
    SLO('goodput >= 2.8')
    >>> parse_slo("failed_share <= 2%")
    Traceback (most recent call last):
    ...
    pipesim.errors.SLOError: SLO 'failed_share <= 2%': failed_share is a share or a rate: no unit, got '%'
    """
    if not isinstance(text, str):
        raise SLOError(f"an SLO is a text such as {_EXAMPLE[5:]}, got {type(text).__name__}")
    where = f"SLO {_quoted(text)}"
    match = _SLO_TEXT.fullmatch(text)
    if not match or not match["figure"]:
        raise SLOError(f"{where}: expected FIGURE OP VALUE, {_EXAMPLE}")
    figure, op, value = match["figure"], match["op"], match["value"]
    if figure not in SLO_FIGURES:
        close = difflib.get_close_matches(figure, list(SLO_FIGURES), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see pipesim.slo.SLO_FIGURES"
        raise SLOError(f"{where}: unknown figure {_quoted(figure)} ({hint})")
    if op not in OPERATORS:
        raise SLOError(f"{where}: the operator must be one of {', '.join(OPERATORS)}, got {_quoted(op)}")
    number = _NUMBER.fullmatch(value)
    if not number or not math.isfinite(float(number["number"])):
        raise SLOError(f"{where}: the bound must be a finite number{' with a unit' if SLO_FIGURES[figure] else ''}"
                       f", got {_quoted(value)}")
    unit = number["unit"]
    if SLO_FIGURES[figure]:
        if unit not in TIME_UNITS:
            raise SLOError(f"{where}: {figure} is a time: give the bound a unit, e.g. {number['number']}ms or "
                           f"{number['number']}s, got {_quoted(unit) if unit else 'none'}")
    elif unit:
        raise SLOError(f"{where}: {figure} is a share or a rate: no unit, got {_quoted(unit)}")
    return SLO(figure, op, float(number["number"]), unit)


def merge_slos(base: Iterable[str | SLO], extra: Iterable[str | SLO]) -> list[SLO]:
    """``base`` (e.g. a scenario's ``slo:`` list) with ``extra`` (e.g. ``--slo`` flags) added: an extra SLO
    replaces a base one on the same figure in the same direction (both upper bounds, or both lower).

    >>> merge_slos(["goodput >= 2.8", "ttft_p99 < 900ms"], ["ttft_p99 <= 1s"])
    [SLO('goodput >= 2.8'), SLO('ttft_p99 <= 1s')]
    """
    slos = [s if isinstance(s, SLO) else parse_slo(s) for s in base]
    for item in extra:
        slo = item if isinstance(item, SLO) else parse_slo(item)
        slos = [s for s in slos if (s.figure, s.upper) != (slo.figure, slo.upper)] + [slo]
    return slos


# Verdicts ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judgement:
    """An SLO judged from ``replications`` runs: the figure's ``mean`` and 95% interval (``low``, ``high``),
    the runs where the figure was infinite, the ``verdict`` (met, violated, undecided) and why."""

    slo: SLO
    mean: float
    low: float
    high: float
    replications: int
    infinite_runs: int
    verdict: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """As plain data (JSON-ready: infinities as the strings ``"inf"``, ``"-inf"``, NaN as None)."""
        return {"slo": str(self.slo), "figure": self.slo.figure, "op": self.slo.op, "bound": self.slo.bound,
                "unit": self.slo.unit, "mean": json_number(self.mean), "low": json_number(self.low),
                "high": json_number(self.high),
                "replications": self.replications, "infinite_runs": self.infinite_runs, "verdict": self.verdict,
                "reason": self.reason}


def json_number(value: float) -> float | str | None:
    """A figure as JSON can carry it: NaN as null, infinities as "inf" / "-inf".

    >>> json_number(float("inf")), json_number(float("nan")), json_number(1.5)
    ('inf', None, 1.5)
    """
    return None if math.isnan(value) else value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _side(slo: SLO, low: float, high: float) -> str:
    """met / violated / undecided for an interval [low, high] against the SLO's bound."""
    b = slo.bound
    inside = {"<=": high <= b, "<": high < b, ">=": low >= b, ">": low > b}[slo.op]
    outside = {"<=": low > b, "<": low >= b, ">=": high < b, ">": high <= b}[slo.op]
    return "met" if inside else "violated" if outside else "undecided"


def judge(slo: SLO, values: Sequence[float], confidence: float = 0.95) -> Judgement:
    """Judge ``slo`` from one figure per run (NaN: no value in that run, left out).

    >>> judge(parse_slo("goodput >= 2.8"), [3.0, 3.05, 2.95]).verdict
    'met'
    >>> judge(parse_slo("goodput >= 2.8"), [2.5, 3.3, 2.9]).verdict
    'undecided'
    >>> judge(parse_slo("e2e_latency_p95 <= 1.5s"), [1.2, float("inf"), 1.3]).reason
    'infinite in 1 of 3 runs (more than 5% of its turns timed out)'
    """
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    n, infinite = len(array), int(np.isinf(array).sum())
    if n == 0:
        return Judgement(slo, math.nan, math.nan, math.nan, 0, 0, "undecided", "no value in any run")
    if infinite:
        mean = float(array.mean())  # inf (or nan if +inf and -inf: no figure is ever -inf)
        share = {"mean": "any", **{k: f"more than {round(100 * (1 - q)):g}%" for k, q in RUN_QUANTILES.items()}}
        stat = slo.figure.rsplit("_", 1)[-1]
        why = f" ({share[stat]} of its turns timed out)" if stat in share else ""
        return Judgement(slo, mean, mean, mean, n, infinite, _side(slo, mean, mean),
                         f"infinite in {infinite} of {n} runs{why}")
    mean = float(array.mean())
    if n < 2:
        return Judgement(slo, mean, math.nan, math.nan, n, 0, "undecided", "one run: no interval")
    half = float(scipy.stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    verdict = _side(slo, mean - half, mean + half)
    reason = {"met": "the whole interval meets the bound", "violated": "the whole interval is past the bound",
              "undecided": "the interval straddles the bound"}[verdict]
    return Judgement(slo, mean, mean - half, mean + half, n, 0, verdict, reason)


def collapsed_runs(runs: pd.DataFrame, threshold: float = COLLAPSE_SHARE) -> pd.Series:
    """Which runs collapsed: their ``collapse_share`` (:func:`pipesim.analysis.collapse_share`) is above
    ``threshold``.

    >>> collapsed_runs(pd.DataFrame({"collapse_share": [0.0, 0.98, float("nan")]})).tolist()
    [False, True, False]
    """
    return runs["collapse_share"] > threshold


def judge_runs(slos: Sequence[SLO], runs: pd.DataFrame, confidence: float = 0.95,
               collapse_threshold: float = COLLAPSE_SHARE, collapse_violates: bool = True) -> list[Judgement]:
    """Judge every SLO from per-run figures (one row per replication). When some run collapsed (and
    ``collapse_violates``), every SLO is violated, whatever its interval says.

    >>> runs = pd.DataFrame({"goodput": [3.0, 3.1, 2.9], "collapse_share": [0.0, 0.9, 0.0]})
    >>> [j.verdict for j in judge_runs([parse_slo("goodput >= 2.8")], runs)]
    ['violated']
    """
    out = []
    collapsed = int(collapsed_runs(runs, collapse_threshold).sum()) if "collapse_share" in runs else 0
    for slo in slos:
        j = judge(slo, runs[slo.figure].tolist() if slo.figure in runs else [], confidence)
        if collapsed and collapse_violates:
            j = dataclasses.replace(j, verdict="violated",
                                    reason=f"{collapsed} of {len(runs)} runs collapsed; {j.reason}")
        out.append(j)
    return out


