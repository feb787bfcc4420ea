"""The closed forms of pipesim.theory against textbook values and their own identities."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesim.replications import confidence_intervals, replication_seeds
from pipesim.theory import MMc, erlang_b, erlang_c, min_servers, single_stage_scenario


def erlang_c_by_factorials(c: int, a: Fraction) -> Fraction:
    """The textbook formula, in exact rational arithmetic (only for small c)."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


# Textbook values ---------------------------------------------------------------------------------------
def test_mm1_at_rho_08() -> None:
    lam, mu = 8.0, 10.0
    q = MMc(lam, mu)
    rho = lam / mu
    assert q.utilisation == pytest.approx(rho)
    assert q.prob_wait == pytest.approx(rho)
    assert q.mean_wait == pytest.approx(rho / (mu - lam))          # 0.4 s
    assert q.mean_sojourn == pytest.approx(1 / (mu - lam))         # 0.5 s
    assert q.mean_queue == pytest.approx(rho**2 / (1 - rho))       # 3.2
    assert q.mean_in_system == pytest.approx(rho / (1 - rho))      # 4
    assert q.wait_survival(0.3) == pytest.approx(rho * math.exp(-(mu - lam) * 0.3))
    # The median wait solves rho exp(-(mu - lam) t) = 0.5.
    assert q.wait_percentile(0.5) == pytest.approx(math.log(rho / 0.5) / (mu - lam))


def test_mm2_closed_forms() -> None:
    # M/M/2: P(wait) = 2 rho^2 / (1 + rho), Wq = rho^2 / (mu (1 - rho^2)).
    for rho in (0.1, 0.5, 0.9):
        q = MMc(2 * rho * 3.0, 3.0, servers=2)
        assert q.prob_wait == pytest.approx(2 * rho**2 / (1 + rho))
        assert q.mean_wait == pytest.approx(rho**2 / (3.0 * (1 - rho**2)))


@pytest.mark.parametrize(("servers", "load", "expected"), [
    # Worked by hand: C = (a^c / c!) (c / (c - a)) / (sum_{k<c} a^k / k! + (a^c / c!) (c / (c - a))).
    (2, 1.0, 1 / 3),        # M/M/2 at rho = 0.5: 2 rho^2 / (1 + rho)
    (3, 2.0, 4 / 9),        # (4/3 * 3) / (1 + 2 + 2 + 4)
    (4, 3.0, 27 / 53),      # (81/24 * 4) / (1 + 3 + 9/2 + 27/6 + 27/2); tables print 0.5094
])
def test_erlang_c_table(servers: int, load: float, expected: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(expected, rel=1e-12)
    assert erlang_c(servers, load) == pytest.approx(float(erlang_c_by_factorials(servers, Fraction(load))),
                                                    rel=1e-12)


def test_large_systems_stay_finite() -> None:
    # a^c / c! overflows a float long before c = 5000; the Erlang B recursion does not.
    q = MMc(4900.0, 1.0, servers=5000)
    assert 0 < q.prob_wait < 1 and math.isfinite(q.mean_wait)
    # The same figure by logarithms (lgamma) of the textbook formula.
    a, c = 4900.0, 5000
    log_terms = [k * math.log(a) - math.lgamma(k + 1) for k in range(c)]
    log_top = c * math.log(a) - math.lgamma(c + 1) + math.log(c / (c - a))
    peak = max(*log_terms, log_top)
    top = math.exp(log_top - peak)
    assert q.prob_wait == pytest.approx(top / (sum(math.exp(x - peak) for x in log_terms) + top), rel=1e-9)


def test_unstable_queues() -> None:
    q = MMc(10.0, 2.0, servers=5)  # rho = 1
    assert not q.stable
    assert q.prob_wait == 1.0
    assert q.mean_wait == q.mean_sojourn == q.mean_queue == q.mean_in_system == math.inf
    assert q.wait_percentile(0.5) == math.inf and q.wait_survival(100.0) == 1.0


@pytest.mark.parametrize("bad", [
    dict(arrival_rate=0.0, service_rate=1.0), dict(arrival_rate=1.0, service_rate=-1.0),
    dict(arrival_rate=math.nan, service_rate=1.0), dict(arrival_rate=1.0, service_rate=1.0, servers=0),
    dict(arrival_rate=1.0, service_rate=1.0, servers=2.5),
])
def test_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        MMc(**bad)


def test_min_servers_targets() -> None:
    lam, mu = 20.0, 4.0  # 5 Erlangs: at least 6 servers for stability
    assert min_servers(lam, mu, mean_wait=10.0) == 6
    for kw in (dict(mean_wait=0.01), dict(prob_wait=0.1), dict(wait_percentile=0.05, quantile=0.95)):
        c = min_servers(lam, mu, **kw)
        assert _meets(MMc(lam, mu, c), **kw) and not _meets(MMc(lam, mu, c - 1), **kw)
    # Several targets: all must hold.
    both = min_servers(lam, mu, mean_wait=0.01, prob_wait=0.01)
    assert both == max(min_servers(lam, mu, mean_wait=0.01), min_servers(lam, mu, prob_wait=0.01))
    with pytest.raises(ValueError, match="give a target"):
        min_servers(lam, mu)
    with pytest.raises(ValueError, match="mean_wait must be > 0"):
        min_servers(lam, mu, mean_wait=0.0)
    with pytest.raises(ValueError, match="max_servers"):
        min_servers(lam, mu, prob_wait=1e-9, max_servers=10)


def _meets(q: MMc, mean_wait: float | None = None, prob_wait: float | None = None,
           wait_percentile: float | None = None, quantile: float = 0.95) -> bool:
    return (q.stable and (mean_wait is None or q.mean_wait <= mean_wait)
            and (prob_wait is None or q.prob_wait <= prob_wait)
            and (wait_percentile is None or q.wait_percentile(quantile) <= wait_percentile))


def test_single_stage_scenario_is_valid() -> None:
    from pipesim.scenario import Scenario

    scn = Scenario.model_validate(single_stage_scenario(10.0, 0.25, 4, 100, seed=3))
    assert scn.services.stt.capacity == 4 and scn.services.stt.latency_s.mean == 0.25
    assert scn.sessions.arrivals.rate_per_s == 10.0 and scn.seed == 3


# Properties --------------------------------------------------------------------------------------------
rates = st.floats(min_value=0.01, max_value=1000.0, allow_nan=False)
servers = st.integers(min_value=1, max_value=300)
utilisations = st.floats(min_value=0.01, max_value=0.99)


@settings(max_examples=200, deadline=None)
@given(servers=servers, rho=utilisations, mu=rates)
def test_identities(servers: int, rho: float, mu: float) -> None:
    q = MMc(rho * servers * mu, mu, servers)
    assert 0 <= q.prob_wait <= 1
    assert q.mean_queue == pytest.approx(q.arrival_rate * q.mean_wait)                 # Little, queue
    assert q.mean_in_system == pytest.approx(q.arrival_rate * q.mean_sojourn)          # Little, system
    assert q.mean_in_system == pytest.approx(q.mean_queue + q.offered_load)            # L = Lq + a
    assert q.wait_survival(0.0) == pytest.approx(q.prob_wait)
    # The percentile inverts the survival function where it is positive.
    p95 = q.wait_percentile(0.95)
    assert p95 == 0.0 if q.prob_wait <= 0.05 else q.wait_survival(p95) == pytest.approx(0.05)
    # The mean of an exponential tail with mass C and rate (c mu - lambda) is Wq.
    assert q.mean_wait == pytest.approx(q.prob_wait / (servers * mu - q.arrival_rate))


@settings(max_examples=200, deadline=None)
@given(load=st.floats(min_value=0.01, max_value=200.0), extra=st.integers(min_value=1, max_value=50))
def test_more_servers_never_hurt(load: float, extra: int) -> None:
    c = math.floor(load) + 1  # the fewest servers that are stable
    small, large = MMc(load, 1.0, c), MMc(load, 1.0, c + extra)
    assert large.prob_wait <= small.prob_wait
    assert large.mean_wait <= small.mean_wait
    assert large.wait_percentile(0.99) <= small.wait_percentile(0.99)
    assert erlang_b(c + extra, load) <= erlang_b(c, load)


@settings(max_examples=100, deadline=None)
@given(lam=rates, mu=rates)
def test_one_server_is_mm1(lam: float, mu: float) -> None:
    q = MMc(lam, mu, 1)
    rho = lam / mu
    if rho >= 1:
        assert q.mean_wait == math.inf
        return
    assert q.prob_wait == pytest.approx(rho)
    assert q.mean_wait == pytest.approx(rho / (mu - lam))
    assert q.mean_in_system == pytest.approx(rho / (1 - rho))


@settings(max_examples=50, deadline=None)
@given(c=st.integers(min_value=1, max_value=25), a=st.fractions(min_value=Fraction(1, 100), max_value=25))
def test_erlang_c_matches_factorial_formula(c: int, a: Fraction) -> None:
    if a >= c:
        assert erlang_c(c, float(a)) == 1.0
    else:
        assert erlang_c(c, float(a)) == pytest.approx(float(erlang_c_by_factorials(c, a)), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(lam=st.floats(min_value=0.1, max_value=100.0), mu=st.floats(min_value=0.1, max_value=10.0),
       target=st.floats(min_value=0.001, max_value=1.0))
def test_min_servers_is_the_smallest(lam: float, mu: float, target: float) -> None:
    for kw in (dict(mean_wait=target), dict(prob_wait=target), dict(wait_percentile=target, quantile=0.99)):
        c = min_servers(lam, mu, **kw)
        assert _meets(MMc(lam, mu, c), **kw)
        assert c == 1 or not _meets(MMc(lam, mu, c - 1), **kw)


# Replication helpers -----------------------------------------------------------------------------------
def test_confidence_interval_arithmetic() -> None:
    import pandas as pd

    ci = confidence_intervals(pd.DataFrame({"seed": [1, 2, 3, 4], "x": [1.0, 2.0, 3.0, 6.0]}), 0.95)
    sd = pd.Series([1.0, 2.0, 3.0, 6.0]).std()
    assert list(ci.index) == ["x"]
    assert ci.loc["x", "half_width"] == pytest.approx(scipy.stats.t.ppf(0.975, 3) * sd / 2)
    assert replication_seeds(1, 5) != replication_seeds(2, 5)
