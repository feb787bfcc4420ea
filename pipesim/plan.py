"""``pipesim plan``: the least-cost worker counts (STT, LLM, TTS) whose replications meet the SLOs.

1. **Load.** One pilot run with workers to spare (no queueing) measures each service's request rate and
   mean busy time per request; :func:`pipesim.theory.min_servers` gives the *floor*, the fewest workers
   with utilisation below 1: below it the queue grows without bound, so no configuration below is tried.
2. **Climb.** From the floor, each configuration is judged by :func:`pipesim.gate.check`; while it is not
   met (violated or undecided), one worker is added to the service busiest in its runs (highest mean
   utilisation).
3. **Descend.** From the first configuration met, one worker is taken from a service (the most expensive
   first) while the result is still met: the answer is met and no single worker less is.

Every configuration runs the same replications (``replication_seeds(seed, k)``: common random numbers), so
two configurations differ by their workers, not by their luck. Cost is workers times each service's cost
per worker (default 1). Failures no worker buys back (poor audio, service errors) make ``failed_share``
unreachable: bound ``timeout_failed_share`` instead (see :mod:`pipesim.slo`).

>>> sessions = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0, "count": 60}, "turns": 3}
>>> result = plan({"seed": 3, "sessions": sessions}, ["e2e_latency_p95 <= 2.5s"], until=90)
>>> result.best.capacities, result.best.cost, len(result.trials)
({'stt': 2, 'llm': 3, 'tts': 5}, 10.0, 7)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipesim.errors import PlanError, SLOError
from pipesim.gate import CheckResult, check
from pipesim.replications import ScenarioLike, replication_seeds
from pipesim.results import simulate
from pipesim.scenario import Scenario, as_scenario
from pipesim.slo import merge_slos
from pipesim.theory import min_servers
from pipesim.vocabulary import SERVICES

#: Workers of every service in the pilot run: enough that no request waits.
PILOT_CAPACITY = 10_000


@dataclass(frozen=True)
class Load:
    """A service's offered load in the pilot run: requests per second and mean busy seconds per request."""

    rate_per_s: float
    busy_s: float

    @property
    def floor(self) -> int:
        """The fewest workers with utilisation below 1 (:func:`pipesim.theory.min_servers`)."""
        return min_servers(self.rate_per_s, 1.0 / self.busy_s, prob_wait=1.0)


def service_loads(scenario: ScenarioLike, seed: int | None = None, until: float | None = None,
                  warmup_s: float = 0.0) -> dict[str, Load]:
    """Each service's :class:`Load`, from one run with :data:`PILOT_CAPACITY` workers everywhere (the first
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
    for svc in SERVICES:
        busy = kept[f"{svc}_busy"]
        busy = busy[busy > 0]
        if not len(busy) or not window > 0:
            raise PlanError(f"no request reached {svc} in the pilot run: run it longer (until) or with less warm-up")
        loads[svc] = Load(len(busy) / window, float(busy.mean()))
    return loads


@dataclass(frozen=True)
class Trial:
    """One configuration judged: its workers per service, its cost, and :func:`~pipesim.gate.check`'s result."""

    capacities: dict[str, int]
    cost: float
    result: CheckResult

    @property
    def met(self) -> bool:
        return self.result.verdict == "met"


@dataclass
class PlanResult:
    """What :func:`plan` found: the load and floor of each service, every configuration tried (in order) and
    ``best``, the least-cost one met (None when none was within ``max_trials``)."""

    scenario: str
    loads: dict[str, Load]
    costs: dict[str, float]
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None

    @property
    def exit_code(self) -> int:
        """``pipesim plan``'s: 0 with an answer, 1 without."""
        return 0 if self.best is not None else 1

    def to_dict(self) -> dict[str, Any]:
        """As plain data (the same command gives the same data)."""
        return {"scenario": self.scenario, "costs": self.costs,
                "loads": {s: {"rate_per_s": v.rate_per_s, "busy_s": v.busy_s, "floor": v.floor}
                          for s, v in self.loads.items()},
                "trials": [{"capacities": t.capacities, "cost": t.cost, "verdict": t.result.verdict,
                            "replications": len(t.result.runs)} for t in self.trials],
                "best": None if self.best is None else {"capacities": self.best.capacities, "cost": self.best.cost,
                                                        "check": self.best.result.to_dict()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def __str__(self) -> str:
        lines = [f"plan {self.scenario}: " + ", ".join(
            f"{s} {v.rate_per_s:.3g} requests/s x {v.busy_s:.3g} s busy: at least {v.floor} workers"
            for s, v in self.loads.items())]
        for t in self.trials:
            workers = " ".join(f"{s}={c}" for s, c in t.capacities.items())
            lines.append(f"  {workers}  cost {t.cost:g}  {t.result.verdict} ({len(t.result.runs)} runs)")
        if self.best is None:
            lines.append("no configuration tried meets every SLO: raise --max-trials, or check that the SLOs can "
                         "be met by workers (failed_share counts poor audio: bound timeout_failed_share)")
        else:
            workers = " ".join(f"--set services.{s}.capacity={c}" for s, c in self.best.capacities.items())
            lines += [f"answer: {workers}  (cost {self.best.cost:g})", str(self.best.result)]
        return "\n".join(lines)


def plan(scenario: ScenarioLike, slos: Iterable[str] = (), *, costs: Mapping[str, float] | None = None,
         services: Sequence[str] = SERVICES, max_trials: int = 20, seed: int | None = None,
         until: float | None = None, warmup_s: float = 0.0, **check_options: Any) -> PlanResult:
    """The least-cost workers of ``services`` (the others as the scenario has them) meeting every SLO, by the
    climb and descent of the module's docstring; at most ``max_trials`` configurations are judged.
    ``check_options`` go to :func:`pipesim.gate.check` (``min_replications``, ``max_replications``,
    ``workers``, ...)."""
    scn = as_scenario(scenario)
    unknown = [s for s in services if s not in SERVICES] + [s for s in (costs or {}) if s not in SERVICES]
    if unknown:
        raise PlanError(f"no such service: {', '.join(map(str, unknown))} (services: {', '.join(SERVICES)})")
    cost_of = {s: float((costs or {}).get(s, 1.0)) for s in SERVICES}
    if any(not (0 <= c < math.inf) for c in cost_of.values()):
        raise PlanError(f"a cost per worker must be a finite number >= 0, got {cost_of}")
    slos = list(slos)
    if not merge_slos(scn.slo, slos):
        raise SLOError("no SLO to plan for: give one (e.g. --slo 'e2e_latency_p95 <= 1.5s') or an slo: list in "
                       "the scenario")
    base = scn.seed if seed is None else seed
    loads = service_loads(scn, base, until, warmup_s)
    out = PlanResult(scn.name, {s: loads[s] for s in services}, {s: cost_of[s] for s in services})
    floor = {s: loads[s].floor for s in services}
    tried: dict[tuple[int, ...], Trial] = {}

    def judge(capacities: dict[str, int]) -> Trial:
        key = tuple(capacities[s] for s in services)
        if key not in tried:
            config: Scenario = scn.override({f"services.{s}.capacity": c for s, c in capacities.items()})
            result = check(config, slos, seed=base, until=until, warmup_s=warmup_s, **check_options)
            tried[key] = Trial(dict(capacities), sum(cost_of[s] * c for s, c in capacities.items()), result)
            out.trials.append(tried[key])
        return tried[key]

    current = dict(floor)
    while not judge(current).met:  # climb: a worker more where the runs were busiest
        if len(tried) >= max_trials:
            return out
        runs = tried[tuple(current[s] for s in services)].result.runs
        busiest = max(services, key=lambda s: (float(runs[f"{s}_utilisation"].mean()), -cost_of[s]))
        current[busiest] += 1
    improved = True
    while improved and len(tried) < max_trials:  # descend: a worker less while still met, dearest first
        improved = False
        for svc in sorted(services, key=lambda s: -cost_of[s]):
            fewer = {**current, svc: current[svc] - 1}
            if fewer[svc] < floor[svc] or len(tried) >= max_trials:
                continue
            if judge(fewer).met:
                current, improved = fewer, True
                break
    out.best = tried[tuple(current[s] for s in services)]
    return out
