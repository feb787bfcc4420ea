"""``pipesim plan``: the least-cost configuration whose replications meet the SLOs, and the highest load at
which given capacities still meet them (``headroom``).

:func:`plan` varies dotted scenario paths (``services.llm.capacity``, over a range of integers or a list of
values), each with a cost per unit (default 1), and answers with the cheapest configuration found met:

1. **Theory first.** One pilot run with workers to spare (no queueing) measures each service's offered load
   (requests per second x mean busy seconds per request: the arrival rate x turns x mean service time the
   scenario implies, retries and barge-ins included). :func:`pipesim.theory.min_servers` gives each varied
   capacity its *floor*, the fewest workers with utilisation below 1 (below it the queue grows without
   bound: nothing there is simulated), and its *first guess*: the Erlang C minimum for an SLO on that
   service's queue (``stt_queue_p95 <= 50ms``, ``llm_queue_mean <= ...``), else the floor.
2. **Guard.** The top of every range is judged first: when it is not met, no configuration is, and the plan
   ends (exit 1) saying what the top violates.
3. **Climb.** While the configuration is not met (violated or undecided), one step up the varied dimension
   whose service was busiest in its runs (highest mean utilisation; the cheaper step on a tie).
4. **Minimality.** Each dimension one step down from the configuration (dearest first) is judged; when one is
   met, the search goes on from there. It ends when every configuration one step cheaper is violated,
   undecided, below the floor or outside the range: that is the evidence printed beside the answer.

Every configuration is judged by :func:`pipesim.gate.check` (replications added one at a time, decided in
seed order, so the answer does not depend on the number of workers) with the same seeds (common random
numbers): two configurations differ by their parameters, not by their luck.

>>> sessions = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 60}, "turns": 3}
>>> result = plan({"seed": 3, "sessions": sessions}, ["e2e_latency_p95 <= 2.5s"],
...               vary={"services.llm.capacity": range(1, 17)}, until=90, warmup_s=0)
>>> result.recommended, result.cost
({'services.llm.capacity': 3}, 3.0)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipesim.errors import PlanError, SLOError
from pipesim.gate import CheckResult, check
from pipesim.replications import QUANTILES, ScenarioLike, replication_seeds
from pipesim.results import simulate
from pipesim.scenario import Scenario, as_scenario
from pipesim.slo import SLO, merge_slos
from pipesim.theory import min_servers
from pipesim.vocabulary import SERVICES

#: Workers of every service in the pilot run: enough that no request waits.
PILOT_CAPACITY = 10_000
#: The defaults of ``pipesim plan``'s ``--until`` and ``--warmup`` (see the README: long enough that a run
#: past capacity collapses and the warm-up's empty queues are left out, short enough to plan in a minute).
DEFAULT_UNTIL_S, DEFAULT_WARMUP_S = 150.0, 30.0
_CAPACITY = re.compile(r"services\.(?P<service>[a-z]+)\.capacity")


@dataclass(frozen=True)
class Load:
    """A service's offered load in the pilot run: requests per second and mean busy seconds per request."""

    rate_per_s: float
    busy_s: float

    @property
    def floor(self) -> int:
        """The fewest workers with utilisation below 1 (:func:`pipesim.theory.min_servers`)."""
        return min_servers(self.rate_per_s, 1.0 / self.busy_s, prob_wait=1.0)

    def first_guess(self, slos: Iterable[SLO], service: str) -> int:
        """The Erlang C minimum (:func:`~pipesim.theory.min_servers`) for the upper bounds on ``service``'s
        queue (``<service>_queue_mean``, ``_p50``, ``_p95``, ``_p99``), at least the floor.

        >>> from pipesim.slo import parse_slo
        >>> Load(3.0, 0.5).first_guess([parse_slo("stt_queue_p95 <= 100ms")], "stt"), Load(3.0, 0.5).floor
        (4, 2)
        """
        guess = self.floor
        for slo in slos:
            stat = slo.figure.removeprefix(f"{service}_queue_")
            if not slo.upper or stat == slo.figure or not slo.bound > 0:
                continue
            target = ({"mean_wait": slo.bound} if stat == "mean" else
                      {"wait_percentile": slo.bound, "quantile": QUANTILES[stat]})
            guess = max(guess, min_servers(self.rate_per_s, 1.0 / self.busy_s, **target))
        return guess


def service_loads(scenario: ScenarioLike, seed: int | None = None, until: float | None = None,
                  warmup_s: float = 0.0, services: Sequence[str] = SERVICES) -> dict[str, Load]:
    """Each of ``services``' :class:`Load`, from one run with :data:`PILOT_CAPACITY` workers everywhere (the first
    replication's seed), over the turns whose utterance ended after ``warmup_s``.

    >>> loads = service_loads({"sessions": {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 30}}},
    ...                       until=60)
    >>> loads["llm"].rate_per_s > 0 and loads["llm"].floor >= 1
    True
    """
    scn = as_scenario(scenario)
    pilot = scn.override({f"services.{svc}.capacity": PILOT_CAPACITY for svc in SERVICES})
    first = replication_seeds(scn.seed if seed is None else seed, 1)[0]
    turns = simulate(pilot, seed=first, until=until, progress=False).turns
    kept = turns[~(turns["utterance_ended"] < warmup_s)]
    window = float(turns["utterance_ended"].max()) - warmup_s
    loads = {}
    for svc in services:
        busy = kept[f"{svc}_busy"]
        busy = busy[busy > 0]
        if not len(busy) or not window > 0:
            raise PlanError(f"no request reached {svc} in the pilot run: run it longer (until) or with less warm-up")
        loads[svc] = Load(len(busy) / window, float(busy.mean()))
    return loads


def parse_values(path: str, text: str) -> tuple[int | float, ...]:
    """``--vary``'s values: ``LOW..HIGH`` (integers, both included) or ``V1,V2,...`` (numbers), sorted.

    >>> parse_values("services.llm.capacity", "4..7"), parse_values("kafka.max_retries", "3,0,1")
    ((4, 5, 6, 7), (0, 1, 3))
    """
    low, dots, high = text.partition("..")
    try:
        if dots:
            values: list[int | float] = list(range(int(low), int(high) + 1))
        else:
            values = [float(v) if any(c in v for c in ".eE") else int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise PlanError(f"--vary {path}={text}: expected LOW..HIGH (integers, LOW <= HIGH) or V1,V2,... (numbers)")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class Dimension:
    """One varied path: its values (ascending), the cost of one unit, and the floor (the lowest value worth
    simulating: the theory's for a service's capacity) and first guess."""

    path: str
    values: tuple[int | float, ...]
    cost: float = 1.0
    floor: float = -math.inf
    guess: float = -math.inf

    @property
    def service(self) -> str | None:
        """The service whose workers this path counts, if it does."""
        match = _CAPACITY.fullmatch(self.path)
        return match["service"] if match and match["service"] in SERVICES else None

    def start(self) -> int:
        """The index of the first value tried: the first at or above the guess (the top if none is)."""
        return next((i for i, v in enumerate(self.values) if v >= max(self.floor, self.guess)),
                    len(self.values) - 1)


@dataclass(frozen=True)
class Evaluation:
    """One configuration judged: its values, cost, why it was judged (``role``) and check's result."""

    values: dict[str, int | float]
    cost: float
    role: str
    result: CheckResult

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def violates(self) -> list[str]:
        """The SLOs not met (violated, then undecided), as written."""
        return ([str(j.slo) for j in self.result.judgements if j.verdict == "violated"]
                + [f"{j.slo} (undecided)" for j in self.result.judgements if j.verdict == "undecided"])

    def row(self) -> dict[str, Any]:
        """One row of :attr:`Plan.table`: values, cost, role, verdict, runs, collapsed runs, and per SLO its
        verdict and its figure's mean and interval (seconds for a time)."""
        out: dict[str, Any] = {**self.values, "cost": self.cost, "role": self.role, "verdict": self.verdict,
                               "replications": len(self.result.runs), "collapsed": self.result.collapsed}
        for j in self.result.judgements:
            out[str(j.slo)] = j.verdict
            out.update({f"{j.slo.figure} mean": j.mean, f"{j.slo.figure} low": j.low, f"{j.slo.figure} high": j.high})
        return out


@dataclass
class Plan:
    """What :func:`plan` (or :func:`headroom`) found. ``recommended`` is {path: value} (None when nothing
    was met), ``cost`` its cost, ``evidence`` {path: the evaluation one step cheaper, or why there is none},
    ``table`` every configuration evaluated; ``print()`` it, :meth:`to_json`, :meth:`plot`."""

    scenario: str
    slos: list[SLO]
    dimensions: list[Dimension]
    loads: dict[str, Load]
    seed: int
    until: float | None
    warmup_s: float
    evaluations: list[Evaluation] = field(default_factory=list)
    chosen: Evaluation | None = None
    evidence: dict[str, Evaluation | str] = field(default_factory=dict)
    question: str = "plan"

    @property
    def recommended(self) -> dict[str, int | float] | None:
        return None if self.chosen is None else dict(self.chosen.values)

    @property
    def cost(self) -> float | None:
        return None if self.chosen is None else self.chosen.cost

    @property
    def runs(self) -> int:
        """Simulation runs used (the pilot not counted)."""
        return sum(len(e.result.runs) for e in self.evaluations)

    @property
    def exit_code(self) -> int:
        """``pipesim plan``'s: 0 with an answer, 1 without."""
        return 0 if self.chosen is not None else 1

    @property
    def table(self) -> pd.DataFrame:
        """One row per configuration evaluated, in order (:meth:`Evaluation.row`)."""
        return pd.DataFrame([e.row() for e in self.evaluations])

    def plot(self, pyplot: bool = True) -> Any:
        """The SLO figures against each varied value (:func:`pipesim.plots.plan_figure`)."""
        from pipesim.plots import plan_figure

        return plan_figure(self, pyplot=pyplot)

    def to_dict(self) -> dict[str, Any]:
        """As plain data, ``recommended`` first (the same command gives the same data on any machine)."""
        def evaluation(e: Evaluation) -> dict[str, Any]:
            return {"values": e.values, "cost": e.cost, "role": e.role, "verdict": e.verdict, "violates": e.violates,
                    "replications": len(e.result.runs), "collapsed": e.result.collapsed,
                    "slos": [j.to_dict() for j in e.result.judgements]}

        return {"recommended": self.recommended, "cost": self.cost, "question": self.question,
                "scenario": self.scenario, "slos": [str(s) for s in self.slos], "seed": self.seed,
                "until": self.until, "warmup_s": self.warmup_s, "runs": self.runs,
                "vary": {d.path: {"values": list(d.values), "cost": d.cost, "floor": _finite(d.floor),
                                  "first_guess": _finite(d.guess)} for d in self.dimensions},
                "loads": {s: {"rate_per_s": v.rate_per_s, "busy_s": v.busy_s, "floor": v.floor}
                          for s, v in self.loads.items()},
                "evidence": {p: e if isinstance(e, str) else evaluation(e) for p, e in self.evidence.items()},
                "evaluations": [evaluation(e) for e in self.evaluations]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def _values(self, values: Mapping[str, Any]) -> str:
        return " ".join(f"{p}={v:g}" for p, v in values.items())

    def __str__(self) -> str:
        until = f", until {self.until:g} s" if self.until is not None else ""
        lines = [f"{self.question} {self.scenario}: {', '.join(map(str, self.slos))}; seeds from {self.seed}, "
                 f"warm-up {self.warmup_s:g} s{until}"]
        for svc, load in self.loads.items():
            lines.append(f"  {svc}: {load.rate_per_s:.3g} requests/s x {load.busy_s:.3g} s busy: utilisation "
                         f"below 1 from {load.floor} workers")
        priced = self.question == "plan"
        for e in self.evaluations:
            why = f": {', '.join(e.violates)}" if e.violates else ""
            cost = f"  cost {e.cost:g}" if priced else ""
            lines.append(f"  {self._values(e.values)}{cost}  {e.verdict} ({len(e.result.runs)} runs, {e.role}){why}")
        lines.append(f"{len(self.evaluations)} configurations, {self.runs} runs")
        if self.chosen is None:
            top = self.evaluations[-1] if self.evaluations else None
            said = f": the best tried, {self._values(top.values)}, violates {', '.join(top.violates)}" if top else ""
            return "\n".join([*lines, f"no configuration meets every SLO{said} (exit 1)"])
        lines.append(f"recommended: {self._values(self.chosen.values)}  (cost {self.chosen.cost:g})" if priced else
                     f"highest met: {self._values(self.chosen.values)}")
        lines += str(self.chosen.result).splitlines()[1:-2]
        for path, e in self.evidence.items():
            what = f"one step cheaper in {path}" if priced else "lowest not met"
            if isinstance(e, str):
                lines.append(f"  {what}: {e}")
            else:
                lines.append(f"  {what}: {path}={e.values[path]:g} is {e.verdict}: {', '.join(e.violates)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Plan {self.scenario!r} recommended={self.recommended} cost={self.cost}, {len(self.evaluations)} " \
               f"configurations>"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _dimensions(vary: Mapping[str, Sequence[int | float] | str], costs: Mapping[str, float]) -> list[Dimension]:
    unknown = [p for p in costs if p not in vary]
    if unknown:
        raise PlanError(f"--cost {unknown[0]}: not a varied path (varied: {', '.join(vary) or 'none'})")
    out = []
    for path, values in vary.items():
        cost = float(costs.get(path, 1.0))
        if not 0 <= cost < math.inf:
            raise PlanError(f"--cost {path}={cost}: a cost per unit must be a finite number >= 0")
        vals = parse_values(path, values) if isinstance(values, str) else tuple(sorted(set(values)))
        if not vals:
            raise PlanError(f"--vary {path}: no values")
        out.append(Dimension(path, vals, cost))
    if not out:
        raise PlanError("nothing to vary: give --vary PATH=LOW..HIGH, e.g. --vary services.llm.capacity=1..64")
    return out


def _setup(scenario: ScenarioLike, slos: Iterable[str | SLO], load: Mapping[str, Any] | None,
           seed: int | None) -> tuple[Scenario, list[SLO], int]:
    scn = as_scenario(scenario)
    if load:
        scn = scn.override(dict(load))
    chosen = merge_slos(scn.slo, slos)
    if not chosen:
        raise SLOError("no SLO to plan for: give one (e.g. --slo 'e2e_latency_p95 <= 1.5s') or an slo: list in "
                       "the scenario")
    return scn, chosen, scn.seed if seed is None else seed


class _Judge:
    """Judges configurations once each (the same seeds for all), records them and counts runs on a bar."""

    def __init__(self, scn: Scenario, out: Plan, progress: bool | None, check_options: dict[str, Any]) -> None:
        self.scn, self.out, self.options, self.seen = scn, out, check_options, {}
        self.bar = None
        if progress is not False:  # progress=False touches no tqdm: tqdm.auto warns in Jupyter without ipywidgets
            from tqdm.auto import tqdm  # the widget in Jupyter (pipesim[notebooks] has ipywidgets), else text

            self.bar = tqdm(desc=f"planning {scn.name}", unit="run", disable=None if progress is None else not progress)

    def __call__(self, values: dict[str, int | float], role: str) -> Evaluation:
        key = tuple(values.items())
        if key not in self.seen:
            config = self.scn.override(dict(values))
            result = check(config, self.out.slos, seed=self.out.seed, until=self.out.until,
                           warmup_s=self.out.warmup_s, **self.options)
            cost = sum(d.cost * values[d.path] for d in self.out.dimensions)
            self.seen[key] = Evaluation(dict(values), cost, role, result)
            self.out.evaluations.append(self.seen[key])
            if self.bar is not None:
                self.bar.update(len(result.runs))
                self.bar.set_postfix_str(f"{self.out._values(values)} {result.verdict}")
        return self.seen[key]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plan(scenario: ScenarioLike, slos: Iterable[str | SLO] = (), *,
         vary: Mapping[str, Sequence[int | float] | str], costs: Mapping[str, float] | None = None,
         load: Mapping[str, Any] | None = None, seed: int | None = None, until: float | None = DEFAULT_UNTIL_S,
         warmup_s: float = DEFAULT_WARMUP_S, progress: bool | None = None, **check_options: Any) -> Plan:
    """The cheapest configuration of the ``vary`` paths ({path: values, or ``"LOW..HIGH"``}) meeting every
    SLO, by the search of the module's docstring; cost is the sum of value x ``costs[path]`` (default 1).
    ``load`` overrides scenario fields first (e.g. ``{"sessions.arrivals.rate_per_s": 3}``); ``progress``:
    a bar counting runs (None: on a terminal or in Jupyter, as :func:`~pipesim.replications.sweep`);
    ``check_options`` go to :func:`pipesim.gate.check` (``max_replications``, ``workers``, ``client``, ...).
    See the module's docstring for an example."""
    scn, chosen, base = _setup(scenario, slos, load, seed)
    dims = _dimensions(vary, costs or {})
    for d in dims:  # a value the scenario refuses is one line, before any run
        for value in (d.values[0], d.values[-1]):
            scn.override({d.path: value})
    services = [d.service for d in dims if d.service]
    loads = service_loads(scn, base, until, warmup_s, services) if services else {}
    dims = [Dimension(d.path, d.values, d.cost, loads[d.service].floor, loads[d.service].first_guess(chosen, d.service))
            if d.service else d for d in dims]
    out = Plan(scn.name, chosen, dims, {s: loads[s] for s in services}, base, until, warmup_s)
    judge = _Judge(scn, out, progress, check_options)
    try:
        _search(out, judge)
    finally:
        judge.close()
    return out


def _search(out: Plan, judge: _Judge) -> None:
    dims = out.dimensions

    def values(index: Mapping[str, int]) -> dict[str, int | float]:
        return {d.path: d.values[index[d.path]] for d in dims}

    top = {d.path: len(d.values) - 1 for d in dims}
    if judge(values(top), "top of the ranges").verdict != "met":
        return
    current = {d.path: d.start() for d in dims}
    while (e := judge(values(current), "climb")).verdict != "met":
        up = [d for d in dims if current[d.path] < top[d.path]]
        busiest = max(up, key=lambda d: _busyness(d, current[d.path], e.result.runs))
        current[busiest.path] += 1  # `up` is not empty: the top is met
    while True:  # one step cheaper in each dimension, the dearest step first; go on from any met
        out.evidence = {}
        for d in sorted(dims, key=lambda d: -d.cost * _step_down(d, current[d.path])):
            i = current[d.path]
            if i == 0:
                out.evidence[d.path] = f"{d.values[i]:g} is the bottom of the range"
            elif d.values[i - 1] < d.floor:
                out.evidence[d.path] = (f"{d.values[i - 1]:g} is below the theory's floor ({d.floor:g} workers: "
                                        f"utilisation 1 or more), not simulated")
            elif (e := judge(values({**current, d.path: i - 1}), "one step cheaper")).verdict == "met":
                current[d.path] = i - 1
                break
            else:
                out.evidence[d.path] = e
        else:
            out.chosen = judge(values(current), "recommended")
            return


def _busyness(d: Dimension, i: int, runs: pd.DataFrame) -> tuple[float, float]:
    """How the climb ranks a dimension at index ``i``: its service's mean utilisation in the runs (0 for a
    path that is no service's capacity), then the cheaper step up."""
    column = f"{d.service}_utilisation"
    utilisation = float(runs[column].mean()) if d.service and column in runs else 0.0
    return utilisation, -d.cost * (d.values[i + 1] - d.values[i])


def _step_down(d: Dimension, i: int) -> float:
    return d.values[i] - d.values[i - 1] if i > 0 else 0.0


def headroom(scenario: ScenarioLike, slos: Iterable[str | SLO] = (), *, find: str = "sessions.arrivals.rate_per_s",
             load: Mapping[str, Any] | None = None, tolerance: float = 0.02, max_doublings: int = 8,
             seed: int | None = None, until: float | None = DEFAULT_UNTIL_S, warmup_s: float = DEFAULT_WARMUP_S,
             progress: bool | None = None, **check_options: Any) -> Plan:
    """The highest value of ``find`` (a load, e.g. the arrival rate; capacities as the scenario has them) at
    which every SLO is met: from the scenario's value, doubled until not met (or halved until met), then
    bisected until the met and unmet values are within ``tolerance`` (relative) of each other. A verdict
    other than met (violated or undecided) counts as not met. ``recommended`` is {find: the highest met}
    and ``evidence`` the lowest value tried that is not met.

    >>> sessions = {"arrivals": {"kind": "poisson", "rate_per_s": 0.5, "count": 60}, "turns": 3}
    >>> found = headroom({"seed": 3, "sessions": sessions}, ["e2e_latency_p95 <= 2.5s"], tolerance=0.5,
    ...                  until=90, warmup_s=0)
    >>> found.recommended["sessions.arrivals.rate_per_s"] >= 0.5, found.exit_code
    (True, 0)
    """
    scn, chosen, base = _setup(scenario, slos, load, seed)
    node: Any = scn.model_dump(mode="python")
    for part in find.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PlanError(f"--find {find}: no such field in the scenario")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float) or not 0 < node < math.inf:
        raise PlanError(f"--find {find}: the scenario's value must be a number > 0, got {node!r}")
    if not 0 < tolerance < 1:
        raise PlanError(f"tolerance must be in (0, 1), got {tolerance!r}")
    out = Plan(scn.name, chosen, [Dimension(find, (float(node),), cost=0.0)], {}, base, until, warmup_s,
               question="headroom")
    judge = _Judge(scn, out, progress, check_options)
    try:
        def met(value: float, role: str) -> bool:
            return judge({find: value}, role).verdict == "met"

        low: float | None = None
        high: float | None = None
        value = float(node)
        for _ in range(max_doublings + 1):  # bracket: double while met, halve while not
            if met(value, "bracket"):
                low = value
            else:
                high = value
            if low is not None and high is not None:
                break
            value = value * 2 if high is None else value / 2
        if low is not None and high is not None:
            while (high - low) > tolerance * high:
                middle = (low + high) / 2
                low, high = (middle, high) if met(middle, "bisection") else (low, middle)
        if low is not None:
            out.chosen = judge({find: low}, "highest met")
        out.evidence = ({find: judge({find: high}, "lowest not met")} if high is not None else
                        {find: f"met up to {low:g}, the highest tried ({max_doublings} doublings)"})
    finally:
        judge.close()
    return out


def write_json(result: Plan, path: str | Path) -> None:
    """Write :meth:`Plan.to_json` to ``path`` (its folder made if needed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(result.to_json(), encoding="utf-8")
