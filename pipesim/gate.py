"""``pipesim check``, the CI gate: judge a scenario's SLOs (:mod:`pipesim.slo`) from replications.

:func:`check` runs replications (seeds of :func:`~pipesim.replications.replication_seeds`), measures each with
:func:`slo_metrics` (:func:`~pipesim.replications.run_metrics`, where a turn that failed by timeout is
infinitely late), adds one at a time until every SLO is met or violated, and returns a :class:`CheckResult`:
one line per SLO, the verdict, JUnit XML and JSON. ``pipesim.check`` is :func:`check`.

>>> result = check({"sessions": {"arrivals": {"kind": "at_once", "count": 30}}}, ["failed_share <= 0.5"],
...                until=60)
>>> result.verdict, result.exit_code
('met', 0)
"""

from __future__ import annotations

import functools
import html
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipesim.analysis import COLLAPSE_SHARE, collapse_criterion
from pipesim.errors import SLOError
from pipesim.replications import RunTask, ScenarioLike, execute_runs, replication_seeds, run_metrics
from pipesim.scenario import as_scenario
from pipesim.slo import SLO, TIME_UNITS, Judgement, collapsed_runs, json_number, judge_runs, merge_slos


# One run's figures ---------------------------------------------------------------------------------------
def slo_metrics(res: Any, warmup_s: float = 0.0) -> dict[str, Any]:
    """The per-run figures SLOs judge: :func:`~pipesim.replications.run_metrics` with ``timeouts_infinite``,
    so each turn that failed by ``timeout`` is infinitely late in the figures of the stage where it timed
    out and every later one (see the module's docstring). Picklable through ``functools.partial``.

    >>> from pipesim.results import simulate
    >>> res = simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 40}},
    ...                 "services": {"llm": {"capacity": 1}}, "kafka": {"max_retries": 0}}, seed=1, progress=False)
    >>> m = slo_metrics(res)
    >>> m["timeout_failed_share"] > 0.05, m["e2e_latency_p95"], m["e2e_latency_mean"]
    (True, inf, inf)
    """
    return run_metrics(res, warmup_s, timeouts_infinite=True)


# The CI gate ----------------------------------------------------------------------------------------------
EXIT_CODES = {"met": 0, "violated": 1, "undecided": 3}


@dataclass
class CheckResult:
    """What :func:`check` found: one :class:`Judgement` per SLO, the runs they rest on (one row per
    replication, seconds) and the overall ``verdict``; ``exit_code`` is ``pipesim check``'s (0 met,
    1 violated, 3 undecided). ``print()`` it for one line per SLO; :meth:`to_json`, :meth:`to_junit`."""

    scenario: str
    base_seed: int
    warmup_s: float
    until: float | None
    confidence: float
    collapse_threshold: float
    collapse_violates: bool
    max_replications: int
    runs: pd.DataFrame
    judgements: list[Judgement]

    @property
    def verdict(self) -> str:
        """violated if any SLO is, else undecided if any is, else met."""
        found = {j.verdict for j in self.judgements}
        return "violated" if "violated" in found else "undecided" if "undecided" in found else "met"

    @property
    def passed(self) -> bool:
        """True when every SLO is met."""
        return self.verdict == "met"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def collapsed(self) -> int:
        """How many runs collapsed (see :func:`collapse_criterion`)."""
        return int(collapsed_runs(self.runs, self.collapse_threshold).sum())

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data: the same command gives the same data on any machine."""
        return {"scenario": self.scenario, "base_seed": self.base_seed, "warmup_s": self.warmup_s,
                "until": self.until, "confidence": self.confidence, "replications": len(self.runs),
                "max_replications": self.max_replications, "seeds": [int(s) for s in self.runs["seed"]],
                "collapse": {"criterion": collapse_criterion(self.collapse_threshold),
                             "threshold": self.collapse_threshold, "violates": self.collapse_violates,
                             "collapsed_runs": self.collapsed,
                             "shares": [json_number(float(v)) for v in self.runs["collapse_share"]]},
                "slos": [j.to_dict() for j in self.judgements], "verdict": self.verdict, "exit_code": self.exit_code,
                "turns_sha256": list(self.runs["turns_sha256"])}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def _heading(self) -> str:
        until = f", until {self.until:g} s" if self.until is not None else ""
        return (f"check {self.scenario}: {len(self.runs)} replications (seeds from {self.base_seed}), warm-up "
                f"{self.warmup_s:g} s{until}; mean and {self.confidence:.0%} Student-t interval across runs")

    def _collapse_line(self) -> str:
        rule = "violates every SLO" if self.collapse_violates else "judged by the figures alone"
        return (f"collapse: {self.collapsed} of {len(self.runs)} runs collapsed (criterion: "
                f"{collapse_criterion(self.collapse_threshold)}){'; a collapse ' + rule if self.collapsed else ''}")

    def lines(self) -> list[tuple[str, str, str, str, str]]:
        """(SLO, mean, interval, runs, verdict and why) per SLO, as printed."""
        rows = []
        for j in self.judgements:
            scale = TIME_UNITS[j.slo.unit] if j.slo.unit else 1.0
            unit = f" {j.slo.unit}" if j.slo.unit else ""
            mean = _number(j.mean / scale) + unit
            interval = ("-" if math.isnan(j.low) or math.isinf(j.mean)
                        else f"[{_number(j.low / scale)}, {_number(j.high / scale)}]")
            rows.append((str(j.slo), mean, interval, f"{j.replications} runs", f"{j.verdict}: {j.reason}"))
        return rows

    def __str__(self) -> str:
        rows = self.lines()
        widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else []
        body = ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        return "\n".join([self._heading(), *body, self._collapse_line(),
                          f"verdict: {self.verdict} (exit {self.exit_code})"])

    def __repr__(self) -> str:
        return f"<CheckResult {self.scenario!r} {self.verdict}: {len(self.judgements)} SLOs, {len(self.runs)} runs>"

    def _repr_html_(self) -> str:
        colour = {"met": "#1a7f37", "violated": "#cf222e", "undecided": "#9a6700"}
        body = "".join(
            f"<tr><td><code>{html.escape(slo)}</code></td><td>{html.escape(mean)}</td><td>{html.escape(ci)}</td>"
            f"<td>{html.escape(n)}</td><td style='color:{colour[j.verdict]}'>{html.escape(why)}</td></tr>"
            for (slo, mean, ci, n, why), j in zip(self.lines(), self.judgements, strict=True))
        return (f"<b>{html.escape(self._heading())}</b><table><tr><th>SLO</th><th>mean</th><th>interval</th>"
                f"<th>runs</th><th>verdict</th></tr>{body}</table><p>{html.escape(self._collapse_line())}</p>"
                f"<p><b style='color:{colour[self.verdict]}'>{self.verdict}</b></p>")

    def to_junit(self) -> str:
        """JUnit XML: one testcase per SLO; a violated one has a ``failure``, an undecided one is ``skipped``,
        each with the figures in its message (read by GitHub Actions, GitLab and Jenkins reporters)."""
        verdicts = [j.verdict for j in self.judgements]
        counts = {"tests": str(len(verdicts)), "failures": str(verdicts.count("violated")), "errors": "0",
                  "skipped": str(verdicts.count("undecided"))}
        suites = ET.Element("testsuites", name="pipesim check", **counts)
        suite = ET.SubElement(suites, "testsuite", name=f"pipesim check {self.scenario}", **counts)
        properties = ET.SubElement(suite, "properties")
        for name, value in (("scenario", self.scenario), ("base_seed", self.base_seed),
                            ("replications", len(self.runs)), ("warmup_s", self.warmup_s), ("until", self.until),
                            ("collapsed_runs", self.collapsed)):
            ET.SubElement(properties, "property", name=name, value="" if value is None else str(value))
        for (slo, mean, interval, n, why), j in zip(self.lines(), self.judgements, strict=True):
            case = ET.SubElement(suite, "testcase", classname=f"pipesim.check.{self.scenario}", name=slo, time="0")
            message = f"{slo}: mean {mean}, interval {interval}, {n}: {why}"
            if j.verdict == "violated":
                ET.SubElement(case, "failure", message=message, type="SLOViolated").text = (
                    f"{message}\n{self._collapse_line()}")
            elif j.verdict == "undecided":
                ET.SubElement(case, "skipped", message=message)
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.4g}"


def check(scenario: ScenarioLike, slos: Iterable[str | SLO] = (), *, replications: int | None = None,
          min_replications: int = 3, max_replications: int = 30, seed: int | None = None, until: float | None = None,
          warmup_s: float = 0.0, workers: int = 1, confidence: float = 0.95, collapse_threshold: float = COLLAPSE_SHARE,
          collapse_violates: bool = True, progress: bool | None = False, client: Any = None) -> CheckResult:
    """Judge the scenario's SLOs (its ``slo:`` list, with ``slos`` added or replacing those on the same figure
    and direction) from replications, added until every SLO is decided (met or violated) or
    ``max_replications`` ran (``replications``: exactly that many).

    Replication ``k`` always has seed ``replication_seeds(seed, k + 1)[k]`` and the decision is taken after
    each replication in that order, so the answer is the same whatever ``workers`` run them (a round runs
    ``workers`` at once, or on the Dask ``client``; replications past the deciding one are not used).

    >>> result = check({"sessions": {"arrivals": {"kind": "at_once", "count": 30}}},
    ...                ["e2e_latency_p95 <= 5s", "failed_share <= 0.5"], until=60)
    >>> result.verdict, result.exit_code, len(result.runs)
    ('met', 0, 3)
    """
    scn = as_scenario(scenario)
    chosen = merge_slos(scn.slo, slos)
    if not chosen:
        raise SLOError("no SLO to check: give one (e.g. --slo 'e2e_latency_p95 <= 1.5s') or an slo: list in "
                       "the scenario")
    if replications is not None:
        min_replications = max_replications = replications
    for name, value in (("min_replications", min_replications), ("max_replications", max_replications),
                        ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_replications > max_replications:
        raise ValueError(f"min_replications ({min_replications}) is more than max_replications ({max_replications})")
    if not 0 <= collapse_threshold < 1:
        raise ValueError(f"collapse_threshold must be a share in [0, 1), got {collapse_threshold!r}")
    base = scn.seed if seed is None else seed
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ValueError(f"seed must be an integer >= 0, got {base!r}")
    seeds = replication_seeds(base, max_replications)
    metrics = functools.partial(slo_metrics, warmup_s=warmup_s)
    rows: list[dict[str, Any]] = []

    def judged(k: int) -> list[Judgement]:
        runs = pd.DataFrame([{"seed": s, **row} for s, row in zip(seeds[:k], rows[:k], strict=True)])
        return judge_runs(chosen, runs, confidence, collapse_threshold, collapse_violates)

    used, decided = 0, False
    while not decided and len(rows) < max_replications:
        batch = max(workers, min_replications - len(rows))
        todo = seeds[len(rows):min(len(rows) + batch, max_replications)]
        rows += execute_runs([RunTask(scn, s, warmup_s, until, metrics) for s in todo], workers, client, progress,
                         f"checking {scn.name}")
        for k in range(max(used + 1, min_replications), len(rows) + 1):
            used = k
            decided = all(j.verdict != "undecided" for j in judged(k))
            if decided:
                break
    runs = pd.DataFrame([{"seed": s, **row} for s, row in zip(seeds[:used], rows[:used], strict=True)])
    return CheckResult(scn.name, base, float(warmup_s), None if until is None else float(until), confidence,
                       collapse_threshold, collapse_violates, max_replications, runs, judged(used))


def write_reports(result: CheckResult, junit: str | Path | None = None, json_path: str | Path | None = None) -> None:
    """Write the JUnit XML and JSON reports of a check where asked (creating their folders)."""
    for path, text in ((junit, result.to_junit), (json_path, result.to_json)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text(), encoding="utf-8")
