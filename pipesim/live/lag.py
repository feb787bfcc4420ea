"""How late the live pacer steps the model's events: a histogram cheap enough for every step.

The pacer adds one figure each time it steps events that are due: how far the wall clock already is
past the moment the first of them was due. ``GET /stats`` on the live server shows the histogram; a
load test reads it before and after its measurement window and subtracts (:meth:`LagHistogram.since`).

>>> lag = LagHistogram()
>>> for ms in (0.25, 0.35, 12.0):
...     lag.add(ms / 1000)
>>> lag.count, round(lag.quantile(0.5) * 1000, 1), round(lag.max_s * 1000, 1)
(3, 0.4, 12.0)
"""

from __future__ import annotations

from typing import Any

#: Bucket width, seconds (0.1 ms); lags of a second or more share the last bucket.
BUCKET_S = 1e-4
_LAST = 10_000


class LagHistogram:
    """Counts of lags in 0.1 ms buckets (quantiles are the bucket's upper edge: never optimistic)."""

    __slots__ = ("counts", "count", "max_s")

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.count = sum(self.counts.values())
        self.max_s = 0.0

    def add(self, lag_s: float) -> None:
        """Count one lag (seconds; negative counts as 0: early is on time)."""
        i = min(int(lag_s / BUCKET_S), _LAST) if lag_s > 0 else 0
        self.counts[i] = self.counts.get(i, 0) + 1
        self.count += 1
        if lag_s > self.max_s:
            self.max_s = lag_s

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), seconds; 0.0 when nothing was counted."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return (i + 1) * BUCKET_S
        return (_LAST + 1) * BUCKET_S

    def since(self, earlier: dict[str, Any]) -> LagHistogram:
        """The lags counted after ``earlier`` (an :meth:`as_dict` of this histogram)."""
        before = {int(k): v for k, v in earlier["counts"].items()}
        return LagHistogram({i: n - before.get(i, 0) for i, n in self.counts.items() if n > before.get(i, 0)})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts by bucket, count, p50/p99/max in milliseconds."""
        return {"bucket_ms": BUCKET_S * 1000, "counts": {str(i): n for i, n in sorted(self.counts.items())},
                "count": self.count, "p50_ms": self.quantile(0.5) * 1000, "p99_ms": self.quantile(0.99) * 1000,
                "max_ms": self.max_s * 1000}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LagHistogram:
        """The inverse of :meth:`as_dict` (``max_ms`` included)."""
        out = cls({int(k): v for k, v in data["counts"].items()})
        out.max_s = data.get("max_ms", 0.0) / 1000
        return out
