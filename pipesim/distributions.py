"""Latency and duration distributions, as they are written in scenario files, and their samplers.

In a scenario file a distribution is a bare number (a constant) or a mapping with a ``kind``::

    latency_s: 0.25                                  # constant
    latency_s: {kind: exponential, mean: 0.2}
    latency_s: {kind: lognormal, p50: 0.25, p95: 0.35}
    latency_s: {kind: gamma, mean: 0.3, cv: 0.5}
    latency_s: {kind: uniform, low: 0.1, high: 0.3}
    latency_s: {kind: normal, mean: 0.3, sd: 0.05}   # truncated at 0
    latency_s: {kind: empirical, csv: stt_latencies.csv, column: latency_s}
    latency_s: {kind: empirical, samples: [0.21, 0.25, 0.4]}

Samplers draw in blocks from one ``numpy.random.Generator`` (fast, and deterministic for a given
stream).

>>> import numpy as np
>>> d = parse_distribution({"kind": "lognormal", "p50": 0.25, "p95": 0.35})
>>> s = d.sampler(np.random.default_rng(1))
>>> 0.1 < s() < 1.0
True
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

_Z95 = 1.6448536269514722  # standard normal quantile at 0.95
_BLOCK = 64


def _number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 1000 else f"{value:g}"


def within(low: float | None = None, high: float | None = None, why: str = "") -> AfterValidator:
    """A pydantic validator refusing numbers outside ``[low, high]``, saying ``why`` the bound is there.

    >>> from typing import Annotated
    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(Annotated[float, within(high=10, why="ten is plenty")]).validate_python(11)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for function-after[check(), float]
      Value error, must be <= 10, got 11.0: ten is plenty [type=value_error, input_value=11, input_type=int]
    ...
    """
    reason = f": {why}" if why else ""

    def check(value: Any) -> Any:
        if value is not None and low is not None and value < low:
            raise ValueError(f"must be >= {_number(low)}, got {value!r}{reason}")
        if value is not None and high is not None and value > high:
            raise ValueError(f"must be <= {_number(high)}, got {value!r}{reason}")
        return value

    return AfterValidator(check)


#: Every parameter of a distribution (seconds, tokens or turns) is at most this: a million seconds is
#: ~11.6 days, a million tokens or turns more than any conversation.
MAX_PARAMETER = 1_000_000.0
_PARAM_WHY = "distribution parameters are seconds, tokens or turns, at most a million"
#: Draws are cut here, the largest a parameter may be: a lognormal whose p95 is many times its p50 can
#: otherwise draw infinity. No draw of an ordinary scenario comes near it.
MAX_DRAW = MAX_PARAMETER
Param = Annotated[float, within(high=MAX_PARAMETER, why=_PARAM_WHY)]


class _Dist(BaseModel):
    # inf and nan are refused: every parameter must be a finite number.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True,
                              allow_inf_nan=False)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def mean(self) -> float:
        """The distribution's mean (analytic where there is one)."""
        raise NotImplementedError  # pragma: no cover

    def sampler(self, rng: np.random.Generator) -> Callable[[], float]:
        """A callable that returns one draw at a time, drawing ``rng`` in blocks (:class:`Sampler`)."""
        return Sampler(self, rng).draw


class Constant(_Dist):
    kind: Literal["constant"] = "constant"
    value: Annotated[Param, Field(ge=0)]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)

    @property
    def mean(self) -> float:
        return self.value

    def sampler(self, rng: np.random.Generator) -> Callable[[], float]:
        return itertools.repeat(self.value).__next__  # the value for ever, at the cost of a C call


class Exponential(_Dist):
    kind: Literal["exponential"] = "exponential"
    mean_: Annotated[Param, Field(gt=0, alias="mean")]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_, n)

    @property
    def mean(self) -> float:
        return self.mean_


class LogNormal(_Dist):
    """Given by its median and 95th percentile, as latency figures are published."""

    kind: Literal["lognormal"] = "lognormal"
    p50: Annotated[Param, Field(gt=0)]
    p95: Annotated[Param, Field(gt=0)]

    @model_validator(mode="after")
    def _p95_above_p50(self) -> LogNormal:
        if self.p95 <= self.p50:
            raise ValueError(f"p95 must be greater than p50, got p50={self.p50} p95={self.p95}")
        return self

    @property
    def sigma(self) -> float:
        return math.log(self.p95 / self.p50) / _Z95

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # A wide one (p95 / p50 of 1e6 or more) can draw infinity: cut at MAX_DRAW.
        return np.minimum(rng.lognormal(math.log(self.p50), self.sigma, n), MAX_DRAW)

    @property
    def mean(self) -> float:
        try:
            return self.p50 * math.exp(self.sigma**2 / 2)
        except OverflowError:
            return math.inf


class Gamma(_Dist):
    """Given by its mean and coefficient of variation (sd / mean)."""

    kind: Literal["gamma"] = "gamma"
    mean_: Annotated[Param, Field(gt=0, alias="mean")]
    # 1/cv**2 is the shape: a cv below 0.001 would make it overflow (and is a constant anyway).
    cv: Annotated[float, within(0.001, 100.0, why="the coefficient of variation sd / mean")]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, self.mean_ / shape, n)

    @property
    def mean(self) -> float:
        return self.mean_


class Uniform(_Dist):
    kind: Literal["uniform"] = "uniform"
    low: Annotated[Param, Field(ge=0)]
    high: Annotated[Param, Field(ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high must be >= low, got low={self.low} high={self.high}")
        return self

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2


class Normal(_Dist):
    """Truncated at zero: durations are never negative."""

    kind: Literal["normal"] = "normal"
    mean_: Annotated[Param, Field(ge=0, alias="mean")]
    sd: Annotated[Param, Field(ge=0)]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.maximum(rng.normal(self.mean_, self.sd, n), 0.0)

    @property
    def mean(self) -> float:
        return self.mean_


class Empirical(_Dist):
    """Resamples observed values: inline ``samples`` or a ``column`` of a ``csv`` file (a path relative
    to the scenario file)."""

    kind: Literal["empirical"] = "empirical"
    samples: tuple[Param, ...] | None = None
    csv_: Annotated[str | None, Field(alias="csv")] = None
    column: str | None = None

    @field_validator("samples")
    @classmethod
    def _non_negative(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and (not v or min(v) < 0):
            raise ValueError("samples must be a non-empty list of values >= 0")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Empirical:
        if (self.samples is None) == (self.csv_ is None):
            raise ValueError("give exactly one of 'samples' or 'csv' (with 'column')")
        return self

    def resolved(self, base_dir: Path) -> Empirical:
        """Load the CSV column (relative to ``base_dir``) into ``samples``; a bad file is one ValueError
        line naming the file, the line of the CSV and what is wrong."""
        if self.samples is not None:
            return self
        path = Path(self.csv_ or "")
        path = path if path.is_absolute() else base_dir / path
        return Empirical(samples=read_csv_column(path, self.column))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.samples is None:
            raise ValueError("empirical distribution from a CSV must be resolved before sampling")
        return rng.choice(np.asarray(self.samples), n)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else math.nan


#: A CSV of samples is read only up to this size.
MAX_CSV_BYTES = 64 * 1_048_576


def read_text(path: Path, limit: int = MAX_CSV_BYTES) -> str:
    """The UTF-8 text of a data file of at most ``limit`` bytes (read no further). Raises ``ValueError``
    with one line naming the file, and the line of a byte that is not UTF-8.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = p.write_bytes(b"a\\n\\xff\\n")
    >>> read_text(p)
    Traceback (most recent call last):
    ...
    ValueError: ...x.csv:2: not UTF-8 text (byte 0xff)
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL in the path
        raise ValueError(f"{path}: cannot read: {exc}") from None
    if len(raw) > limit:
        raise ValueError(f"{path}: more than {limit:,} bytes, the limit")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})") from None


def read_csv_column(path: Path, column: str | None = None) -> tuple[float, ...]:
    """The values of one column (default: the first) of a CSV file with a header line; empty cells are
    skipped. Raises ``ValueError`` with one line naming the file, the CSV line and what is wrong.

    >>> import os, tempfile
    >>> p = Path(tempfile.mkdtemp()) / "lat.csv"
    >>> _ = p.write_text("latency_s\\n0.2\\n0.3\\n")
    >>> read_csv_column(p)
    (0.2, 0.3)
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    values: list[float] = []
    try:
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty (expected a header line naming the columns)")
        name = column or header[0]
        if name not in header:
            shown = ", ".join(header[:10]) + (", ..." if len(header) > 10 else "")
            raise ValueError(f"{path} has no column {name[:40]!r} (columns: {shown[:200]})")
        index = header.index(name)
        for row in reader:
            cell = row[index].strip() if index < len(row) else ""
            if not cell:
                continue
            where = f"{path} line {reader.line_num}"
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{where}: not a number: {cell[:40]!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: not a finite number: {cell[:40]!r}")
            if value < 0:
                raise ValueError(f"{where}: must be >= 0, got {value}")
            values.append(value)
    except csv.Error as exc:
        raise ValueError(f"{path} line {reader.line_num}: {exc}") from None
    if not values:
        raise ValueError(f"{path} column {name!r} has no values")
    return tuple(values)


Distribution = Annotated[
    Constant | Exponential | LogNormal | Gamma | Uniform | Normal | Empirical, Field(discriminator="kind")
]
_adapter: TypeAdapter[Any] = TypeAdapter(Distribution)


def coerce_distribution(value: Any) -> Any:
    """Scenario-file shorthand: a bare number is a constant."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"kind": "constant", "value": value}
    return value


def parse_distribution(value: Any) -> _Dist:
    """Validate one distribution given as in a scenario file."""
    return _adapter.validate_python(coerce_distribution(value))


class Sampler:
    """Returns one draw per call, refilling a block of draws from its generator when empty.

    The block is drawn when the first value is asked for, and again when it is used up: the same draws in
    the same order whatever the block is kept in. It is kept as 64 C doubles, last draw first, each taken with
    ``pop`` (512 bytes rather than a list of 64 float objects' ~2.5 KB: a session holds eleven samplers).
    :meth:`_Dist.sampler` hands out the bound method :meth:`draw`: calling it is a plain function call (an
    instance's ``__call__`` goes through a slower protocol).

    >>> s = Sampler(Uniform(low=1.0, high=2.0), np.random.default_rng(7))
    >>> first, second = s.draw(), s.draw()
    >>> [first, second] == Uniform(low=1.0, high=2.0).draw(np.random.default_rng(7), 64)[:2].tolist()
    True
    """

    __slots__ = ("_dist", "_rng", "_left")

    def __init__(self, dist: _Dist, rng: np.random.Generator) -> None:
        self._dist, self._rng = dist, rng
        self._left = array("d")  # the draws not taken yet, the next one last

    def draw(self) -> float:
        """The next draw."""
        left = self._left
        if not left:
            left.frombytes(np.asarray(self._dist.draw(self._rng, _BLOCK), dtype=np.float64)[::-1].tobytes())
        return left.pop()
