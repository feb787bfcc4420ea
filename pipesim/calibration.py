"""Calibration from real measurements: fit each stage's latency, check the fit, write a scenario.

Measurements are per-turn timings, in seconds, one row per turn, in a CSV file with a header line. A
column named like one of pipesim's turn columns means the same span (see the README's table of metric
definitions); every other column is ignored, so ``pipesim run --csv``'s ``turns.csv`` is a measurements
file too. Empty cells (a turn that never reached that stage) are skipped.

=========================  ==========================================  ===================================
column                     calibrates                                  what pipesim takes from it
=========================  ==========================================  ===================================
``end_of_utterance_delay`` ``sessions.end_of_utterance_delay_s``       the value
``end_of_turn_delay``      ``sessions.end_of_utterance_delay_s``       (if no ``end_of_utterance_delay``)
                                                                       minus ``transcription_delay``
``stt_service``            ``services.stt.latency_s``                  the value (the STT worker's own time)
``transcription_delay``    ``services.stt.latency_s``                  (if no ``stt_service``) the value
                                                                       beside ``end_of_turn_delay``; else
                                                                       minus ``end_of_utterance_delay``
``ttft``                   ``services.llm.ttft_s``                     the value
``tts_service``            ``services.tts.ttfb_s``                     the value (the TTS worker's own time)
``ttfb``                   ``services.tts.ttfb_s``                     (if no ``tts_service``) the value
=========================  ==========================================  ===================================

**What a measured number contains.** pipesim's service distributions are the services' *own* time, on an
idle worker: the model adds the Kafka legs, the wait for a worker and retries itself. A ``ttft`` measured
at an orchestrator contains all of them, so fitting it as-is counts them twice. Two ways out, both
applied here: (1) measure on a lightly loaded system (no queueing, few timeouts), and (2) subtract what
is known: where a row also has ``<x>_kafka``, ``<x>_queue`` or ``<x>_retry`` (``x`` = stt, llm, tts;
pipesim's own columns), they are taken off ``transcription_delay``, ``ttft`` and ``ttfb``. A difference
below zero counts as 0; a stage more than :data:`MOSTLY` of whose values are 0 or less gets a warning
(:attr:`Calibration.warnings`): the measurement's turn is not pipesim's.

**Whose turn.** pipesim's turn is sequential: the end of the turn is decided, then STT runs, so
``transcription_delay`` is ``end_of_utterance_delay + stt_stage``. In LiveKit Agents STT streams while the
user speaks and the turn is decided only once the final transcript is in, both delays counted from the end
of speech: ``transcription_delay <= end_of_turn_delay``. A column named ``end_of_turn_delay`` says so: STT
is calibrated from ``transcription_delay`` and the end-of-utterance wait from the rest, so that pipesim's
``end_of_utterance_delay + stt_stage`` is LiveKit's time to the LLM request, turn by turn.

**LiveKit Agents.** What it documents as a JSON payload is the *session report* (``SessionReport.to_dict()``,
"Data hooks" in its docs): ``chat_history.items[]`` holds each message's ``metrics``: ``end_of_turn_delay``
and ``transcription_delay`` on user messages, ``llm_node_ttft`` and ``tts_node_ttfb`` on assistant
messages. A ``.json`` file (one report) or ``.jsonl`` file (one report per line) is read as that: each
message is a row, with ``llm_node_ttft`` as ``ttft`` and ``tts_node_ttfb`` as ``ttfb``. **Pipecat** has
no export format for its metrics (``MetricsFrame``): write them into the CSV above (the README says which
column each one is).

**A pipesim recording** (``pipesim serve --record``, or ``pipesim record`` of a real orchestrator; its
first line is ``{"recording":"pipesim",...}``) is read turn by turn from the receipt times of its state
updates: ``end_of_utterance_delay`` and ``transcription_delay``. The protocol carries no first-token or
first-audio event, so the LLM and TTS stages cannot be timed from it.

**Fitting.** Each stage is fitted by maximum likelihood with scipy (``lognorm`` and ``gamma``, location
fixed at 0); ``empirical`` keeps the samples. The rule: the parametric family with the smallest
Kolmogorov-Smirnov statistic wins, unless the KS test rejects it (p < :data:`REJECT_P`) and ``empirical``
is allowed, in which case the samples are kept. (The p-values are optimistic: the parameters were fitted
to the same data. They are a screen, not a proof.) A family needs every value > 0 and not all equal. A
stage needs at least :data:`MIN_SAMPLES` values.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(1)
>>> m = pd.DataFrame({"ttft": rng.lognormal(np.log(0.3), 0.5, 400)})
>>> cal = fit(m)
>>> cal.chosen["services.llm.ttft_s"]["kind"]
'lognormal'
>>> apply("baseline", cal).services.llm.ttft_s.kind
'lognormal'
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from pipesim import _jsonsafe
from pipesim.distributions import parse_distribution, read_text
from pipesim.errors import CalibrationError
from pipesim.vocabulary import SERVICES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipesim.results import Results
    from pipesim.scenario import Scenario

#: Fewer values than this in a stage is refused: a KS test and a 95th percentile need a few dozen.
MIN_SAMPLES = 30
#: A parametric fit whose KS p-value is below this is rejected in favour of the samples (if allowed).
REJECT_P = 0.01
FAMILIES = ("lognormal", "gamma", "empirical")
#: A fragment keeps at most this many samples per stage inline; more go to a CSV beside it.
MAX_INLINE_SAMPLES = 5_000
_Z95 = 1.6448536269514722



@dataclass(frozen=True)
class Source:
    """One way to measure a stage: ``column`` minus the ``minus`` columns of the same row. It applies when
    the row has all of them and ``when``, a column that says which turn the measurement timed."""

    column: str
    minus: tuple[str, ...] = ()
    when: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column this source needs."""
        return (self.column, *self.minus, *((self.when,) if self.when else ()))


@dataclass(frozen=True)
class Stage:
    """One calibrated scenario field and the ways to measure it, best first."""

    name: str
    field: str
    sources: tuple[Source, ...]
    service: str | None = None  # whose <x>_kafka / _queue / _retry columns are subtracted


# pipesim's turn is sequential: the end of the turn is decided (end_of_utterance_delay after the user's last
# audio), then STT runs. LiveKit's STT streams while the user speaks and its turn ends once the final
# transcript is in, both delays counted from the end of speech (``end_of_turn_delay`` >= ``transcription_delay``):
# its STT time is ``transcription_delay`` and what remains of ``end_of_turn_delay`` is the wait after it, so
# that pipesim's end_of_utterance_delay + stt_stage is LiveKit's time to the LLM request.
STAGES = (
    Stage("end_of_utterance", "sessions.end_of_utterance_delay_s",
          (Source("end_of_utterance_delay"), Source("end_of_turn_delay", ("transcription_delay",)))),
    Stage("stt", "services.stt.latency_s",
          (Source("stt_service"), Source("transcription_delay", when="end_of_turn_delay"),
           Source("transcription_delay", ("end_of_utterance_delay",))), "stt"),
    Stage("llm", "services.llm.ttft_s", (Source("ttft"),), "llm"),
    Stage("tts", "services.tts.ttfb_s", (Source("tts_service"), Source("ttfb")), "tts"),
)
# Measured at the orchestrator, so with pipesim's Kafka legs, queueing and retries inside.
_AT_ORCHESTRATOR = {"transcription_delay", "ttft", "ttfb"}
_OVERHEADS = tuple(f"{s}_{part}" for s in SERVICES for part in ("kafka", "queue", "retry"))
_MEASURED = tuple(dict.fromkeys(c for s in STAGES for source in s.sources for c in source.columns))
COLUMNS = _MEASURED + _OVERHEADS
_LIVEKIT = {"end_of_turn_delay": "end_of_turn_delay", "transcription_delay": "transcription_delay",
            "llm_node_ttft": "ttft", "tts_node_ttfb": "ttfb"}
#: A stage more than this share of whose values are <= 0 gets a warning: the measurement's turn is not pipesim's.
MOSTLY = 0.5


# Reading ---------------------------------------------------------------------------------------------
def read_measurements(path: str | Path) -> pd.DataFrame:
    """Per-turn timings (seconds) from a CSV, or a LiveKit session report (``.json``/``.jsonl``).

    Returns one row per turn (per message for a session report) with the columns pipesim calibrates
    from (see the module's table); ``attrs["source"]`` is the path. A bad file raises
    :class:`CalibrationError` naming the file, line and column.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = p.write_text("turn,ttft\\n1,0.31\\n2,oops\\n")
    >>> read_measurements(p)
    Traceback (most recent call last):
    ...
    pipesim.errors.CalibrationError: ...m.csv:3 ttft: not a number: 'oops'
    """
    path = measurements_path(path)
    if path.suffix.lower() in (".yaml", ".yml", ".toml"):
        raise CalibrationError(f"{path}: a scenario file, not measurements: pipesim fit reads per-turn timings (a CSV, "
                               f"a LiveKit session report .json/.jsonl, or a pipesim recording) and writes a "
                               f"scenario (--out), starting from another (--base)")
    text = _read_text(path)
    if _is_recording(text):
        frame = _recording(text, path)
    elif path.suffix.lower() in (".json", ".jsonl"):
        frame = _livekit_reports(text, path)
    else:
        frame = _csv(text, path)
    frame.attrs["source"] = str(path)
    return frame


def measurements_path(name_or_path: str | Path) -> Path:
    """A path as given, or the file of bundled measurements' name (as scenarios' names resolve).

    >>> measurements_path("measurements_example").name
    'measurements_example.csv'
    """
    from pipesim.scenario import BUNDLED_DIR
    from pipesim.scenario.files import bundled_or_given

    path = bundled_or_given(name_or_path, ".csv")
    if path is not None:
        return path
    names = sorted(p.stem for p in BUNDLED_DIR.glob("*.csv")
                   if set(p.read_text(encoding="utf-8").partition("\n")[0].split(",")) & set(_MEASURED))
    raise CalibrationError(f"{name_or_path}: no such file, and no bundled measurements of that name "
                           f"(bundled: {', '.join(names)})")


def _read_text(path: Path) -> str:
    try:
        return read_text(path)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None


def _seconds(cell: Any, where: str) -> float:
    """A measured duration: a finite number >= 0; empty, ``nan`` or null is a missing value (NaN)."""
    if cell is None or (isinstance(cell, str) and cell.strip().lower() in ("", "nan", "null", "none")):
        return math.nan
    if isinstance(cell, bool) or not isinstance(cell, str | int | float):
        raise CalibrationError(f"{where}: not a number: {str(cell)[:40]!r}")
    try:
        value = float(cell)
    except ValueError:
        raise CalibrationError(f"{where}: not a number: {str(cell)[:40]!r}") from None
    if math.isnan(value):
        return math.nan
    if not math.isfinite(value):
        raise CalibrationError(f"{where}: not a finite number: {str(cell)[:40]!r}")
    if value < 0:
        raise CalibrationError(f"{where}: must be >= 0 (seconds), got {value:g}")
    return value


def _csv(text: str, path: Path) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise CalibrationError(f"{path}:1: empty (expected a header line naming the columns)")
        header = [h.strip() for h in header]
        known = {name: header.index(name) for name in COLUMNS if name in header}
        if not any(name in known for name in _MEASURED):
            wanted = ", ".join(_MEASURED)
            raise CalibrationError(f"{path}:1: not a CSV of per-turn measurements: no column to calibrate from "
                                   f"(expected at least one of: {wanted})")
        rows: dict[str, list[float]] = {name: [] for name in known}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            for name, index in known.items():
                where = f"{path}:{reader.line_num} {name}"
                rows[name].append(_seconds(row[index] if index < len(row) else "", where))
    except csv.Error as exc:
        raise CalibrationError(f"{path}:{reader.line_num}: {exc}") from None
    return pd.DataFrame(rows, dtype=float)


def _livekit_reports(text: str, path: Path) -> pd.DataFrame:
    """Rows from LiveKit session reports: one JSON document, or one per line (``.jsonl``)."""
    documents: list[tuple[int, Any]] = []
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                documents.append((number, _json(line, path, number)))
    else:
        documents.append((1, _json(text, path, 1)))
    rows: list[dict[str, float]] = []
    for number, doc in documents:
        items = doc.get("chat_history", {}).get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise CalibrationError(f"{path}:{number} chat_history.items: missing; expected a LiveKit session "
                                   f"report (SessionReport.to_dict()) with its chat history")
        for i, item in enumerate(items):
            metrics = item.get("metrics") if isinstance(item, dict) else None
            if not isinstance(metrics, dict):
                continue
            row = {ours: _seconds(metrics.get(theirs), f"{path}:{number} chat_history.items[{i}].metrics.{theirs}")
                   for theirs, ours in _LIVEKIT.items() if theirs in metrics}
            if row:
                rows.append(row)
    if not rows:
        raise CalibrationError(f"{path}:1: no message carries metrics ({', '.join(_LIVEKIT)})")
    return pd.DataFrame(rows, dtype=float)


def _is_recording(text: str) -> bool:
    first = text.lstrip()[:200]
    return first.startswith("{") and '"recording":"pipesim"' in first.replace(" ", "")


def _recording(text: str, path: Path) -> pd.DataFrame:
    """Rows from a pipesim recording (``serve --record``, ``pipesim record``): one per turn, timed by receipt.

    The protocol says when a turn's state changes, not when a service produced its first token or audio,
    so a recording calibrates the end-of-utterance delay and STT: ``end_of_utterance_delay`` is from the
    session's last update while ``listening`` (its last audio) to its first in ``processing``;
    ``transcription_delay`` from that last audio to the first update with STT ``complete``. Times are the
    lines' ``wall`` (receipt) times, times the header's ``speed`` (a ``serve --record`` at ``--speed 10``
    ran ten times faster than the model's time).
    """
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    header = _json(lines[0][1], path, lines[0][0])
    speed = header.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0 < speed < math.inf:
        raise CalibrationError(f"{path}:{lines[0][0]} speed: must be a number > 0, got {speed!r}")
    last_audio: dict[str, float] = {}  # session -> receipt time of its last update while listening
    turns: dict[tuple[str, Any], dict[str, float]] = {}
    for number, line in lines[1:]:
        row = _json(line, path, number)
        message = row.get("message") if isinstance(row, dict) else None
        if not isinstance(message, dict) or message.get("type") != "pipeline_state_update":
            continue
        wall = _seconds(row.get("wall"), f"{path}:{number} wall") * speed
        sid, state = message.get("session_id"), message.get("state")
        if state == "listening":
            last_audio[sid] = wall
            continue
        if sid not in last_audio:  # the recording began mid-turn: when the user stopped is unknown
            continue
        turn = turns.setdefault((sid, message.get("turn_id")), {})
        speech_end = last_audio[sid]
        turn.setdefault("end_of_utterance_delay", wall - speech_end)
        if (message.get("services") or {}).get("stt") == "complete":
            turn.setdefault("transcription_delay", wall - speech_end)
    if not turns:
        raise CalibrationError(f"{path}: the recording holds no complete user turn (an update in listening "
                               f"followed by one in processing) to time")
    return pd.DataFrame(list(turns.values()), columns=["end_of_utterance_delay", "transcription_delay"],
                        dtype=float)


def _json(text: str, path: Path, first_line: int) -> Any:
    try:
        return _jsonsafe.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}:{first_line + exc.lineno - 1}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise CalibrationError(f"{path}:{first_line}: invalid JSON: nested too deeply") from None


def stage_values(measurements: pd.DataFrame, stage: Stage) -> tuple[np.ndarray, str] | None:
    """The values a stage is calibrated from (seconds, a difference below 0 counted as 0) and a description
    of where they came from, or None when no column of the stage is there. Overheads pipesim models itself
    are subtracted.

    >>> stage_values(pd.DataFrame({"ttft": [0.5, 0.4], "llm_kafka": [0.1, 0.0]}), STAGES[2])
    (array([0.4, 0.4]), 'ttft - llm_kafka')
    """
    found = _derived(measurements, stage)
    return None if found is None else (np.maximum(found[0], 0.0), found[1])


def _derived(measurements: pd.DataFrame, stage: Stage) -> tuple[np.ndarray, str] | None:
    """:func:`stage_values` before a difference below 0 is counted as 0 (rows missing a value left out)."""
    columns = set(measurements.columns)
    source = next((s for s in stage.sources if set(s.columns) <= columns), None)
    if source is None:
        given = next((s.column for s in stage.sources if s.column in columns), None)
        if given is not None:
            needs = " or ".join(f"{s.minus[0] if s.minus else s.when}" for s in stage.sources
                                if s.column == given and (s.minus or s.when))
            raise CalibrationError(f"{measurements.attrs.get('source', '<measurements>')} {given}: needs {needs} "
                                   f"in the same rows (see the table of measured columns)")
        return None
    values = measurements[source.column].to_numpy(dtype=float)
    for name in source.minus:
        values = values - measurements[name].to_numpy(dtype=float)
    overheads = [f"{stage.service}_{part}" for part in ("kafka", "queue", "retry")
                 if stage.service and source.column in _AT_ORCHESTRATOR and f"{stage.service}_{part}" in columns]
    for name in overheads:
        values = values - measurements[name].fillna(0.0).to_numpy(dtype=float)
    return values[~np.isnan(values)], " - ".join([source.column, *source.minus, *overheads])


def _model_warning(stage: Stage, values: np.ndarray, source: str) -> str | None:
    """One line when most of a stage's values are <= 0: what was measured is not pipesim's sequential turn."""
    low = int((values <= 0).sum())
    if not len(values) or low <= MOSTLY * len(values):
        return None
    why = ("the transcript came before the turn ended: STT ran while the user spoke, and pipesim's STT starts "
           "when the turn ends; name the column end_of_turn_delay (as LiveKit does) to calibrate STT from "
           "transcription_delay and the end of utterance from the rest"
           if source.startswith("transcription_delay - end_of_utterance_delay")
           else "the measurement's turn differs from pipesim's (see the table of measured columns)")
    return f"{stage.name}: {low} of {len(values)} values of {source} are 0 or less (taken as 0): {why}"


# Fitting ---------------------------------------------------------------------------------------------
def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _parameters(form: dict[str, Any], ms: bool = False) -> str:
    """``p50=0.3 p95=0.7`` (seconds), or ``p50=300 ms p95=700 ms``."""
    if not form:
        return ""
    parts = []
    for key, value in form.items():
        if key == "kind":
            continue
        if key == "cv":
            parts.append(f"cv={value:.3g}")
        else:
            parts.append(f"{key}={value * 1000:.4g} ms" if ms else f"{key}={value:g}")
    return " ".join(parts)


def _fit_family(x: np.ndarray, family: str) -> tuple[dict[str, Any], Any]:
    """(pipesim's form of the fitted distribution, scipy's frozen distribution)."""
    if family == "lognormal":
        s, _, scale = stats.lognorm.fit(x, floc=0)
        form = {"kind": "lognormal", "p50": _round(scale), "p95": _round(scale * math.exp(s * _Z95))}
        return form, stats.lognorm(s, scale=scale)
    a, _, scale = stats.gamma.fit(x, floc=0)
    form = {"kind": "gamma", "mean": _round(a * scale), "cv": _round(1 / math.sqrt(a))}
    return form, stats.gamma(a, scale=scale)


@dataclass
class StageFit:
    """The fits of one stage: every family tried, the one chosen, and the samples."""

    stage: Stage
    source: str
    samples: np.ndarray
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> {form, frozen, ks, p, note}
    chosen: str = ""

    @property
    def distribution(self) -> dict[str, Any]:
        """The chosen distribution, as a scenario file writes it."""
        return self.fits[self.chosen]["form"]


def _fit_stage(stage: Stage, x: np.ndarray, source: str, families: Sequence[str], where: str) -> StageFit:
    if len(x) < MIN_SAMPLES:
        raise CalibrationError(f"{where} {source.split(' ')[0]}: {len(x)} values, at least {MIN_SAMPLES} are "
                               f"needed to fit a distribution")
    result = StageFit(stage, source, np.sort(x))
    for family in families:
        if family == "empirical":
            samples = [_round(v) for v in x]
            result.fits[family] = {"form": {"kind": "empirical", "samples": samples}, "frozen": None,
                                   "ks": math.nan, "p": math.nan, "note": "the samples themselves"}
            continue
        if x.min() <= 0 or np.ptp(x) == 0:
            result.fits[family] = {"form": None, "frozen": None, "ks": math.nan, "p": math.nan,
                                   "note": "needs every value > 0 and not all equal"}
            continue
        form, frozen = _fit_family(x, family)
        try:
            parse_distribution(form)  # within the scenario's bounds (e.g. gamma's cv)
        except ValueError as exc:
            result.fits[family] = {"form": None, "frozen": None, "ks": math.nan, "p": math.nan,
                                   "note": f"fit outside the scenario's bounds: {str(exc).splitlines()[-1][:80]}"}
            continue
        test = stats.kstest(x, frozen.cdf)
        result.fits[family] = {"form": form, "frozen": frozen, "ks": float(test.statistic),
                               "p": float(test.pvalue), "note": ""}
    parametric = [f for f in families if f != "empirical" and result.fits[f]["form"] is not None]
    best = min(parametric, key=lambda f: result.fits[f]["ks"]) if parametric else None
    if best is not None and (result.fits[best]["p"] >= REJECT_P or "empirical" not in families):
        result.chosen = best
    elif "empirical" in families:
        result.chosen = "empirical"
    else:
        notes = "; ".join(f"{f}: {result.fits[f]['note']}" for f in families)
        raise CalibrationError(f"{where} {source.split(' ')[0]}: no family fits ({notes}); allow empirical")
    return result


@dataclass
class Calibration:
    """What :func:`fit` found: one :class:`StageFit` per calibrated stage.

    ``table`` is the goodness of fit as a DataFrame, ``chosen`` the calibrated scenario fields,
    ``scenario()`` a whole scenario (the fragment), ``save()`` writes it as YAML, ``qq_plot()`` draws
    the Q-Q plots.
    """

    source: str
    stages: dict[str, StageFit]
    warnings: list[str] = field(default_factory=list)  # one line each, e.g. a stage whose values are mostly 0

    @property
    def chosen(self) -> dict[str, dict[str, Any]]:
        """Scenario field path -> the chosen distribution, e.g. ``{"services.llm.ttft_s": {...}}``."""
        return {fit.stage.field: fit.distribution for fit in self.stages.values()}

    @property
    def table(self) -> pd.DataFrame:
        """One row per stage and family tried: n, KS statistic and p-value, parameters (seconds), chosen."""
        rows = []
        for fit in self.stages.values():
            for family, f in fit.fits.items():
                form = f["form"] or {}
                params = "" if family == "empirical" else _parameters(form)
                rows.append({"stage": fit.stage.name, "field": fit.stage.field, "measured": fit.source,
                             "n": len(fit.samples), "family": family, "parameters": params,
                             "ks_statistic": f["ks"], "p_value": f["p"], "chosen": family == fit.chosen,
                             "note": f["note"]})
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """The fit table as printed: parameters in milliseconds (a cv has no unit), the chosen marked.

        >>> cal = fit(pd.DataFrame({"ttft": np.linspace(0.1, 0.5, 40)}), ["gamma"])
        >>> cal.summary().loc[("llm", "gamma"), "parameters"]
        'mean=300 ms cv=0.423'
        """
        table = self.table
        forms = [fit.fits[family]["form"] for fit in self.stages.values() for family in fit.fits]
        table["parameters"] = ["" if not form or form["kind"] == "empirical" else _parameters(form, ms=True)
                               for form in forms]
        table["chosen"] = table["chosen"].map({True: "<-", False: ""})
        return table.drop(columns=["field"]).set_index(["stage", "family"])

    def scenario(self, name: str = "calibrated", base: Scenario | str | Path | None = "baseline") -> dict[str, Any]:
        """A whole scenario: ``base`` (a scenario, a file or a bundled name; None: pipesim's defaults) with
        the calibrated fields. Only what differs from pipesim's defaults is written.

        >>> cal = fit(pd.DataFrame({"ttft": np.linspace(0.1, 0.5, 40)}), ["gamma"])
        >>> data = cal.scenario("mine")
        >>> data["sessions"]["arrivals"], data["services"]["llm"]["ttft_s"]["kind"]
        ({'kind': 'poisson', 'rate_per_s': 2.0, 'count': 1000, 'duration_s': None}, 'gamma')
        """
        from pipesim.scenario import Scenario, as_scenario

        data: dict[str, Any] = {"name": name, "description": f"calibrated from {Path(self.source).name}"}
        if base is not None:
            start = as_scenario(base)
            data["description"] += f" on {start.name}'s sessions and capacities"
            changed = _changed(start.model_dump(mode="json", by_alias=True),
                               Scenario().model_dump(mode="json", by_alias=True))
            data.update({k: v for k, v in changed.items() if k not in ("name", "description")})
        for dotted, dist in self.chosen.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = dist
        return data

    def save(self, path: str | Path, name: str | None = None,
             base: Scenario | str | Path | None = "baseline") -> Path:
        """Write :meth:`scenario` (``base`` with the calibrated fields) as a YAML scenario that ``pipesim run
        PATH`` runs; returns the path.

        Empirical stages of more than :data:`MAX_INLINE_SAMPLES` samples go to ``<stem>.samples.csv``
        beside it (one column per stage), referenced by a relative ``csv:``.
        """
        path = Path(path)
        data = self.scenario(name or path.stem, base)
        large = {fit.stage.name: fit for fit in self.stages.values()
                 if fit.chosen == "empirical" and len(fit.samples) > MAX_INLINE_SAMPLES}
        if large:
            samples_path = path.with_name(f"{path.stem}.samples.csv")
            columns = {stage: pd.Series(fit.fits["empirical"]["form"]["samples"]) for stage, fit in large.items()}
            pd.DataFrame(columns).to_csv(samples_path, index=False)
            for stage, fit in large.items():
                node = data
                *parents, leaf = fit.stage.field.split(".")
                for part in parents:
                    node = node[part]
                node[leaf] = {"kind": "empirical", "csv": samples_path.name, "column": stage}
        header = [f"# Written by `pipesim fit`: {data['description']}.",
                  "# A whole scenario: run it with `pipesim run FILE`, or take its fields into another.",
                  "# stage             family     n      KS      p-value"]
        for fit in self.stages.values():
            f = fit.fits[fit.chosen]
            header.append(f"# {fit.stage.name:<18}{fit.chosen:<11}{len(fit.samples):<7}"
                          f"{f['ks']:<8.4f}{f['p']:.3g}")
        body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")
        return path

    def qq_plot(self, pyplot: bool = True) -> Figure:
        """Q-Q plots, one panel per stage: measured quantiles against each fitted family's (ms)."""
        fig, axes = _panels(len(self.stages), pyplot)
        for ax, fit in zip(axes, self.stages.values(), strict=False):
            probs = (np.arange(1, 201) - 0.5) / 200
            measured = np.quantile(fit.samples, probs) * 1000
            low, top = measured.min(), measured.max()
            for family, style in (("lognormal", ("#2563eb", "o")), ("gamma", ("#ea580c", "s"))):
                f = fit.fits.get(family)
                if not f or f["frozen"] is None:
                    continue
                theory = f["frozen"].ppf(probs) * 1000
                low, top = min(low, theory.min()), max(top, theory.max())
                ax.plot(theory, measured, linestyle="none", marker=style[1], markersize=3, color=style[0],
                        alpha=0.7, label=f"{family} (KS {f['ks']:.3f})" + (" chosen" if family == fit.chosen else ""))
            ax.plot([low, top], [low, top], color="#6b7280", linewidth=1, label="y = x")
            ax.set_title(f"{fit.stage.name}: {fit.chosen} (n={len(fit.samples)})")
            ax.set_xlabel("fitted quantile (ms)")
            ax.set_ylabel("measured quantile (ms)")
            ax.legend(fontsize=8, loc="upper left")
        return fig

    def compare_plot(self, results: Results | pd.DataFrame, pyplot: bool = True) -> Figure:
        """Measured and simulated CDFs overlaid, one panel per stage (ms); the simulated values are taken
        from the turns exactly as the measured ones were (same columns, overheads subtracted)."""
        turns = results if isinstance(results, pd.DataFrame) else results.turns
        fig, axes = _panels(len(self.stages), pyplot)
        for ax, fit in zip(axes, self.stages.values(), strict=False):
            found = stage_values(turns, fit.stage)
            for label, values, colour in (("measured", fit.samples, "#111827"),
                                          ("simulated", found[0] if found else np.array([]), "#ea580c")):
                if len(values):
                    xs = np.sort(values) * 1000
                    ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=colour,
                            label=f"{label} (n={len(xs)})")
            ax.set_title(f"{fit.stage.name} ({fit.chosen})")
            ax.set_xlabel(f"{fit.source} (ms)")
            ax.set_ylabel("fraction of turns")
            ax.legend(fontsize=8, loc="lower right")
        return fig


def _panels(n: int, pyplot: bool) -> tuple[Figure, list[Any]]:
    """A figure of ``n`` panels, two to a row; panels beyond ``n`` are hidden."""
    from pipesim.plots import subplots

    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), pyplot=pyplot, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _changed(data: Any, default: Any) -> Any:
    """The parts of a scenario's data that differ from the defaults' (a distribution is kept whole)."""
    if not isinstance(data, dict) or not isinstance(default, dict) or "kind" in data:
        return data
    return {key: _changed(value, default.get(key)) for key, value in data.items() if value != default.get(key)}


def capacity_warnings(scenario: Scenario | str | Path | dict[str, Any]) -> list[str]:
    """One line per service that the scenario's sessions overload, naming the least capacity that holds.

    Each request holds a worker for the service's mean time (the LLM's whole generation, TTS's ttfb plus
    synthesis) and must have its first response within Kafka's ``request_timeout_s``, or it times out and
    is retried, which adds load. Sessions arriving over time (Poisson, or a ramp at its peak) bring turns at
    ``rate`` = sessions per second x turns per session, and a service is an M/M/c queue (Erlang C,
    :mod:`pipesim.theory`): overloaded when its utilisation ``rate x mean / capacity`` is 1 or more, or the
    99th percentile of the wait for a worker leaves no time for the mean first response. Sessions that
    start at once have no steady state: their first turns (first-speech delay, utterance and end of
    utterance drawn from the scenario) go through each service's workers in turn at the mean times (as
    they would once the services before it have the capacity named), and the same 99th percentile is
    checked. Retries, repeats, poor audio and barge-ins are left out: a screen, not the run.

    >>> capacity_warnings("baseline")
    []
    >>> print(capacity_warnings({"services": {"llm": {"capacity": 4}}})[0])  # doctest: +ELLIPSIS
    llm: 100 sessions start at once: 100 first turns x 0.737 s of worker time on capacity 4...
    """
    from pipesim.distributions import parse_distribution
    from pipesim.scenario import as_scenario
    from pipesim.theory import MMc, min_servers

    scn = as_scenario(scenario)
    sessions, services = scn.sessions, scn.services

    def mean(value: Any) -> float:
        return float(parse_distribution(value).mean)

    tokens = mean(services.llm.tokens)
    work = {  # service: (mean first response, mean worker time per request), seconds
        "stt": (mean(services.stt.latency_s),) * 2,
        "llm": (mean(services.llm.ttft_s),
                mean(services.llm.ttft_s) + max(tokens - 1, 0) * mean(services.llm.per_token_s)),
        "tts": (mean(services.tts.ttfb_s), mean(services.tts.ttfb_s)
                + tokens * services.tts.audio_s_per_token * services.tts.real_time_factor),
    }
    timeout, arrivals = scn.kafka.request_timeout_s, sessions.arrivals
    turns = max(1.0, mean(sessions.turns))
    if arrivals.kind == "at_once":
        if not arrivals.count:
            return []
        rng = np.random.default_rng(scn.seed)
        reach = np.sort(sum(parse_distribution(d).draw(rng, arrivals.count) for d in
                            (sessions.first_speech_delay_s, sessions.utterance_s, sessions.end_of_utterance_delay_s)))
    else:
        peak = arrivals.rate_per_s if arrivals.kind == "poisson" else max(r for _, r in arrivals.points)
        rate = peak * turns
        if not rate > 0:
            return []
        why = f"{peak:g} sessions/s x {turns:g} turns" + (" (the ramp's peak)" if arrivals.kind == "ramp" else "")
    lines = []
    for name, (first, busy) in work.items():
        capacity, room = getattr(services, name).capacity, timeout - first
        if not busy > 0:
            continue
        if arrivals.kind == "at_once":
            starts = _first_turns(reach, busy, capacity)
            wait = float(np.quantile(starts - reach, 0.99))
            head = (f"{name}: {arrivals.count} sessions start at once: {arrivals.count} first turns x "
                    f"{busy:.3g} s of worker time on capacity {capacity}")
            detail = f"99% of waits for a worker up to {f'{wait:.3g}' if wait < 100 else f'{wait:,.0f}'} s"
            low, holds = capacity, max(capacity, arrivals.count)  # the wait shrinks with more workers: bisect
            while wait > room > 0 and holds - low > 1:
                middle = (low + holds) // 2
                if np.quantile(_first_turns(reach, busy, middle) - reach, 0.99) <= room:
                    holds = middle
                else:
                    low = middle
            if wait > room > 0:  # the next service's requests, as they would come with this one's capacity fixed
                starts = _first_turns(reach, busy, holds)
            reach = np.sort(starts + first)
        else:
            head = f"{name}: {why}: {rate:.3g} turns/s x {busy:.3g} s of worker time on capacity {capacity}"
            queue = MMc(rate, 1 / busy, capacity)
            wait = queue.wait_percentile(0.99)
            detail = (f"utilisation {queue.utilisation:.0%}, no steady state" if not queue.stable else
                      f"utilisation {queue.utilisation:.0%}, 99% of waits for a worker up to {wait:.3g} s")
            holds = min_servers(rate, 1 / busy, wait_percentile=max(room, 0.0), quantile=0.99)
        if room <= 0:
            lines.append(f"{name}: its mean first response ({first:.3g} s) alone exceeds Kafka's request_timeout_s "
                         f"({timeout:g} s), whatever the capacity")
        elif wait > room:
            lines.append(f"{head}: {detail}, more than the {room:.3g} s that Kafka's request_timeout_s "
                         f"({timeout:g} s) leaves; services.{name}.capacity: {holds} holds")
    return lines


def _first_turns(reach: np.ndarray, busy: float, capacity: int) -> np.ndarray:
    """When each request (sorted times it reaches the service) gets one of ``capacity`` workers, each held
    ``busy`` seconds: first come first served, request i starts when it arrives or when request i - capacity
    (whose worker it takes) is done."""
    starts = reach.copy()
    for i in range(capacity, len(reach), capacity):
        block = slice(i, min(i + capacity, len(reach)))
        starts[block] = np.maximum(reach[block], starts[i - capacity:block.stop - capacity] + busy)
    return starts


def fit(measurements: pd.DataFrame | str | Path, families: Sequence[str] = FAMILIES) -> Calibration:
    """Fit every stage the measurements have (see the module's table) with each of ``families``.

    ``measurements`` is a path (read by :func:`read_measurements`) or a DataFrame of per-turn timings in
    seconds. The choice: the parametric family with the smallest KS statistic, unless its p-value is
    below :data:`REJECT_P` and ``empirical`` is allowed.

    >>> rng = np.random.default_rng(2)
    >>> cal = fit(pd.DataFrame({"ttfb": rng.gamma(4.0, 0.05, 500)}), families=["lognormal", "gamma"])
    >>> cal.chosen["services.tts.ttfb_s"]["kind"]
    'gamma'
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise CalibrationError(f"families: unknown {', '.join(map(repr, unknown)) or '(none given)'} "
                               f"(choose from {', '.join(FAMILIES)})")
    frame = measurements if isinstance(measurements, pd.DataFrame) else read_measurements(measurements)
    source = str(frame.attrs.get("source", "<measurements>"))
    stages, warnings = {}, []
    for stage in STAGES:
        found = _derived(frame, stage)
        if found is not None:
            warning = _model_warning(stage, *found)
            warnings += [warning] if warning else []
            stages[stage.name] = _fit_stage(stage, np.maximum(found[0], 0.0), found[1],
                                            list(dict.fromkeys(families)), source)
    if not stages:
        wanted = ", ".join(_MEASURED)
        raise CalibrationError(f"{source}: no column to calibrate from (expected at least one of: {wanted})")
    return Calibration(source, stages, warnings)


def apply(scenario: Scenario | str | Path | dict[str, Any], calibration: Calibration) -> Scenario:
    """A copy of ``scenario`` (a Scenario, a dict, a file or a bundled name) with the calibrated fields.

    >>> cal = fit(pd.DataFrame({"end_of_utterance_delay": np.linspace(0.2, 0.6, 50)}), ["empirical"])
    >>> len(apply("baseline", cal).sessions.end_of_utterance_delay_s.samples)
    50
    """
    from pipesim.scenario import as_scenario

    return as_scenario(scenario).override(calibration.chosen)
