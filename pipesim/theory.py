"""Closed-form queueing theory (M/M/1, M/M/c) to size a service and to check the simulation against.

A service with ``c`` workers, Poisson arrivals at ``arrival_rate`` (lambda, per second) and exponential
service times of mean ``1 / service_rate`` (mu) is an M/M/c queue (Erlang C). With offered load
``a = lambda / mu`` (Erlangs) and utilisation ``rho = a / c``, in steady state (``rho < 1``):

* ``prob_wait`` = Erlang C: the chance an arrival finds every worker busy;
* ``mean_wait`` (Wq) = C / (c mu - lambda), ``mean_sojourn`` (W) = Wq + 1 / mu;
* ``mean_queue`` (Lq) = lambda Wq and ``mean_in_system`` (L) = lambda W (Little's law);
* ``P(wait > t) = C exp(-(c mu - lambda) t)``, so the q-quantile of the wait is 0 when C <= 1 - q.

An unstable queue (``rho >= 1``) grows without bound: waits, lengths and percentiles are ``inf`` and
``prob_wait`` is 1. Bad parameters (rates <= 0, fewer than 1 server) raise ``ValueError``.

>>> q = MMc(arrival_rate=8, service_rate=10)        # M/M/1 at rho = 0.8
>>> round(q.mean_wait, 3), round(q.mean_sojourn, 3), round(q.mean_queue, 3)
(0.4, 0.5, 3.2)
>>> MMc(3, 1, servers=4).prob_wait                  # doctest: +ELLIPSIS
0.5094...
>>> min_servers(20, 4, mean_wait=0.05)              # 20/s at 250 ms each: 5 Erlangs
7
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MMc", "erlang_b", "erlang_c", "min_servers", "single_stage_scenario"]


def _check_rates(arrival_rate: float, service_rate: float) -> None:
    if not arrival_rate > 0 or not math.isfinite(arrival_rate):
        raise ValueError(f"arrival_rate must be a finite number > 0, got {arrival_rate!r}")
    if not service_rate > 0 or not math.isfinite(service_rate):
        raise ValueError(f"service_rate must be a finite number > 0, got {service_rate!r}")


def _check_servers(servers: int) -> None:
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")


def erlang_b(servers: int, offered_load: float) -> float:
    """Erlang B: the chance an arrival finds all ``servers`` busy in a loss system (M/M/c/c).

    Computed by the recursion ``B(k) = a B(k-1) / (k + a B(k-1))``, ``B(0) = 1``, which never forms
    ``a^c / c!`` and so stays accurate for thousands of servers.

    >>> round(erlang_b(2, 1.0), 4)   # (1/2) / (1 + 1 + 1/2)
    0.2
    >>> 0 < erlang_b(5000, 4900.0) < 1
    True
    """
    _check_servers(servers)
    if not offered_load >= 0 or not math.isfinite(offered_load):
        raise ValueError(f"offered_load must be a finite number >= 0, got {offered_load!r}")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def _erlang_c_from_b(servers: int, offered_load: float, b: float) -> float:
    if offered_load >= servers:
        return 1.0
    return servers * b / (servers - offered_load * (1.0 - b))


def erlang_c(servers: int, offered_load: float) -> float:
    """Erlang C: the chance an arrival has to wait in an M/M/c queue (1 when ``offered_load >= servers``).

    >>> erlang_c(3, 2.0)             # doctest: +ELLIPSIS
    0.4444...
    >>> erlang_c(1, 0.8)             # M/M/1: the chance of waiting is rho
    0.8
    """
    return _erlang_c_from_b(servers, offered_load, erlang_b(servers, offered_load))


@dataclass(frozen=True)
class MMc:
    """An M/M/c queue: Poisson arrivals at ``arrival_rate`` per second, ``servers`` workers each serving
    at ``service_rate`` per second (mean service time ``1 / service_rate``), first come first served.

    Every figure is a steady-state mean in seconds or requests; see the module docstring.

    >>> q = MMc(arrival_rate=16, service_rate=4, servers=5)     # 4 Erlangs on 5 workers
    >>> q.utilisation, round(q.prob_wait, 4), round(q.mean_wait * 1000, 1)
    (0.8, 0.5541, 138.5)
    >>> {k: round(v, 3) for k, v in q.wait_percentiles().items()}
    {'p50': 0.026, 'p95': 0.601, 'p99': 1.004}
    """

    arrival_rate: float
    service_rate: float
    servers: int = 1

    def __post_init__(self) -> None:
        _check_rates(self.arrival_rate, self.service_rate)
        _check_servers(self.servers)

    @property
    def offered_load(self) -> float:
        """a = lambda / mu, in Erlangs: the mean number of busy workers if there were enough."""
        return self.arrival_rate / self.service_rate

    @property
    def utilisation(self) -> float:
        """rho = lambda / (c mu): the fraction of time a worker is busy (>= 1 means unstable)."""
        return self.offered_load / self.servers

    @property
    def stable(self) -> bool:
        """True when rho < 1 (the queue has a steady state)."""
        return self.utilisation < 1

    @property
    def prob_wait(self) -> float:
        """Erlang C: P(an arrival waits at all). 1 when unstable."""
        return erlang_c(self.servers, self.offered_load)

    @property
    def mean_wait(self) -> float:
        """Wq, the mean time in queue (seconds): C / (c mu - lambda). inf when unstable."""
        if not self.stable:
            return math.inf
        return self.prob_wait / (self.servers * self.service_rate - self.arrival_rate)

    @property
    def mean_sojourn(self) -> float:
        """W = Wq + 1/mu, the mean time in the system (seconds). inf when unstable."""
        return self.mean_wait + 1.0 / self.service_rate

    @property
    def mean_queue(self) -> float:
        """Lq = lambda Wq, the time-average number waiting. inf when unstable."""
        return self.arrival_rate * self.mean_wait

    @property
    def mean_in_system(self) -> float:
        """L = lambda W = Lq + a, the time-average number waiting or in service. inf when unstable."""
        return self.arrival_rate * self.mean_sojourn

    def wait_survival(self, t: float) -> float:
        """P(Wq > t) = C exp(-(c mu - lambda) t) for t >= 0 (1 when unstable).

        >>> MMc(8, 10).wait_survival(0.0)
        0.8
        """
        if t < 0:
            raise ValueError(f"t must be >= 0, got {t!r}")
        if not self.stable:
            return 1.0
        return self.prob_wait * math.exp(-(self.servers * self.service_rate - self.arrival_rate) * t)

    def wait_percentile(self, q: float) -> float:
        """The q-quantile of the time in queue (seconds), 0 < q < 1: 0 when P(wait) <= 1 - q, else
        ln(C / (1 - q)) / (c mu - lambda). inf when unstable.

        >>> MMc(8, 10).wait_percentile(0.5) > 0, MMc(1, 10).wait_percentile(0.5)
        (True, 0.0)
        """
        if not 0 < q < 1:
            raise ValueError(f"q must be between 0 and 1 (exclusive), got {q!r}")
        if not self.stable:
            return math.inf
        c = self.prob_wait
        if c <= 1 - q:
            return 0.0
        return math.log(c / (1 - q)) / (self.servers * self.service_rate - self.arrival_rate)

    def wait_percentiles(self, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float]:
        """``{"p50": ..., "p95": ..., "p99": ...}`` of the time in queue (seconds)."""
        return {f"p{100 * q:g}": self.wait_percentile(q) for q in quantiles}

    def summary(self) -> dict[str, float]:
        """Every figure in one dict (handy for a DataFrame row)."""
        return {"arrival_rate": self.arrival_rate, "service_rate": self.service_rate,
                "servers": self.servers, "offered_load": self.offered_load, "utilisation": self.utilisation,
                "prob_wait": self.prob_wait, "mean_wait": self.mean_wait, "mean_sojourn": self.mean_sojourn,
                "mean_queue": self.mean_queue, "mean_in_system": self.mean_in_system,
                **{f"wait_{k}": v for k, v in self.wait_percentiles().items()}}


def min_servers(arrival_rate: float, service_rate: float, *, mean_wait: float | None = None,
                prob_wait: float | None = None, wait_percentile: float | None = None,
                quantile: float = 0.95, max_servers: int = 1_000_000) -> int:
    """The smallest number of workers that meets every target given (at least one):

    * ``mean_wait``: Wq <= this many seconds (> 0);
    * ``prob_wait``: P(an arrival waits) <= this (0 < p <= 1);
    * ``wait_percentile``: the ``quantile`` of the time in queue <= this many seconds (>= 0).

    Only stable configurations count (rho < 1). Raises ``ValueError`` for a missing or impossible target
    or when more than ``max_servers`` would be needed.

    >>> min_servers(20, 4, prob_wait=0.2)
    8
    >>> min_servers(20, 4, wait_percentile=0.1, quantile=0.99)
    10
    """
    _check_rates(arrival_rate, service_rate)
    if mean_wait is None and prob_wait is None and wait_percentile is None:
        raise ValueError("give a target: mean_wait, prob_wait or wait_percentile")
    if mean_wait is not None and not mean_wait > 0:
        raise ValueError(f"mean_wait must be > 0 seconds (no finite number of workers gives 0), got {mean_wait!r}")
    if prob_wait is not None and not 0 < prob_wait <= 1:
        raise ValueError(f"prob_wait must be in (0, 1], got {prob_wait!r}")
    if wait_percentile is not None and not wait_percentile >= 0:
        raise ValueError(f"wait_percentile must be >= 0 seconds, got {wait_percentile!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1 (exclusive), got {quantile!r}")
    a = arrival_rate / service_rate
    b = 1.0
    for c in range(1, max_servers + 1):
        b = a * b / (c + a * b)  # Erlang B, one server more (see erlang_b)
        if a >= c:
            continue
        pw = _erlang_c_from_b(c, a, b)
        spare = c * service_rate - arrival_rate
        ok = (mean_wait is None or pw / spare <= mean_wait) and (prob_wait is None or pw <= prob_wait)
        if ok and wait_percentile is not None:
            tq = 0.0 if pw <= 1 - quantile else math.log(pw / (1 - quantile)) / spare
            ok = tq <= wait_percentile
        if ok:
            return c
    raise ValueError(f"more than max_servers={max_servers} workers would be needed")


def single_stage_scenario(arrival_rate: float, service_mean: float, servers: int, count: int,
                          seed: int = 0) -> dict[str, Any]:
    """A scenario in which the pipeline is one M/M/c queue: the STT service, with ``servers`` workers
    and exponential latency of mean ``service_mean`` seconds, fed by Poisson turns at ``arrival_rate``.

    ``count`` sessions of one turn each arrive as a Poisson process. Every delay before STT is a
    constant (first speech, utterance, end of utterance), so turns reach STT as a shifted Poisson
    process; Kafka takes no time and never stalls; audio is never "poor" (no slower STT, no re-prompts);
    nobody barges in; LLM and TTS answer at once with far more workers than ever needed. Compare the
    run's ``stt_queue`` (and the services table) with ``MMc(arrival_rate, 1 / service_mean, servers)``.

    Kafka's ``request_timeout_s`` applies to Kafka delivery only (not to time queued for a worker), so
    it cannot cut a wait short; it is set high anyway.

    >>> from pipesim.scenario import Scenario
    >>> Scenario.model_validate(single_stage_scenario(3.2, 0.25, 1, 100)).services.stt.capacity
    1
    """
    if not service_mean > 0 or not math.isfinite(service_mean):
        raise ValueError(f"service_mean must be a finite number of seconds > 0, got {service_mean!r}")
    _check_rates(arrival_rate, 1.0 / service_mean)
    _check_servers(servers)
    return {
        "name": f"mmc_{servers}",
        "description": f"M/M/{servers}: Poisson turns at {arrival_rate:g}/s, STT exponential mean {service_mean:g} s",
        "seed": seed,
        "audio": {"metadata_interval_s": None},  # no buffer reports while speaking: fewer events, same queue
        "quality": {"poor_threshold": 0.0},
        "sessions": {
            "arrivals": {"kind": "poisson", "rate_per_s": arrival_rate, "count": count},
            "turns": 1,
            "first_speech_delay_s": 0.0,
            "utterance_s": 1.0,
            "end_of_utterance_delay_s": 0.0,
            "think_time_s": 0.0,
            "barge_in_probability": 0.0,
        },
        "services": {
            "stt": {"capacity": servers, "latency_s": {"kind": "exponential", "mean": service_mean}},
            "llm": {"capacity": 1000, "ttft_s": 0.0, "per_token_s": 0.0, "tokens": 1},
            "tts": {"capacity": 1000, "ttfb_s": 0.0, "audio_s_per_token": 0.001},
        },
        "kafka": {"latency_s": 0.0, "request_timeout_s": 3600.0, "stalls": {"rate_per_hour": 0.0}},
    }
