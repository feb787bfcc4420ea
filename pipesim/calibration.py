"""Calibration from real measurements: fit each stage's latency, check the fit, write a scenario.

Measurements are per-turn timings, in seconds, one row per turn, in a CSV file with a header line. A
column named like one of pipesim's turn columns means the same span (see the README's table of metric
definitions); every other column is ignored, so ``pipesim run --csv``'s ``turns.csv`` is a measurements
file too. Empty cells (a turn that never reached that stage) are skipped.

=========================  ==========================================  ===================================
column                     calibrates                                  what pipesim takes from it
=========================  ==========================================  ===================================
``end_of_utterance_delay`` ``sessions.end_of_utterance_delay_s``       the value
``stt_service``            ``services.stt.latency_s``                  the value (the STT worker's own time)
``transcription_delay``    ``services.stt.latency_s``                  (if no ``stt_service``) minus
                                                                       ``end_of_utterance_delay`` of the row
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
below zero (a transcript that arrived before the end of the turn was decided, as LiveKit's streaming STT
often does: STT was not on the critical path) counts as 0.

**LiveKit Agents.** Its per-turn metrics (``EOUMetrics``, ``LLMMetrics.ttft``, ``TTSMetrics.ttfb``) reach
a program as ``metrics_collected`` events, which LiveKit documents as objects, not as a file. What it does
document as a JSON payload is the *session report* (``SessionReport.to_dict()``, "Data hooks" in its
docs): ``chat_history.items[]`` holds each message's ``metrics``: ``end_of_turn_delay`` and
``transcription_delay`` on user messages, ``llm_node_ttft`` and ``tts_node_ttfb`` on assistant messages.
A ``.json`` file (one report) or ``.jsonl`` file (one report per line) is read as that: each message is
a row, with ``end_of_turn_delay`` as ``end_of_utterance_delay``, ``llm_node_ttft`` as ``ttft`` and
``tts_node_ttfb`` as ``ttfb``. **Pipecat** documents its metrics (``MetricsFrame``, TTFB per service) as
frames and log lines only, with no export format: write them into the CSV above.

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
class Stage:
    """One calibrated scenario field and the measured columns it is taken from, best first."""

    name: str
    field: str
    sources: tuple[str, ...]
    service: str | None = None  # whose <x>_kafka / _queue / _retry columns are subtracted


STAGES = (
    Stage("end_of_utterance", "sessions.end_of_utterance_delay_s", ("end_of_utterance_delay",)),
    Stage("stt", "services.stt.latency_s", ("stt_service", "transcription_delay"), "stt"),
    Stage("llm", "services.llm.ttft_s", ("ttft",), "llm"),
    Stage("tts", "services.tts.ttfb_s", ("tts_service", "ttfb"), "tts"),
)
_DIRECT = {"stt_service", "tts_service", "end_of_utterance_delay"}  # already the service's own time
_OVERHEADS = tuple(f"{s}_{part}" for s in SERVICES for part in ("kafka", "queue", "retry"))
COLUMNS = tuple(dict.fromkeys(c for s in STAGES for c in s.sources)) + _OVERHEADS
_LIVEKIT = {"end_of_turn_delay": "end_of_utterance_delay", "transcription_delay": "transcription_delay",
            "llm_node_ttft": "ttft", "tts_node_ttfb": "ttfb"}


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
    path = Path(path)
    text = _read_text(path)
    if _is_recording(text):
        frame = _recording(text, path)
    elif path.suffix.lower() in (".json", ".jsonl"):
        frame = _livekit_reports(text, path)
    else:
        frame = _csv(text, path)
    frame.attrs["source"] = str(path)
    return frame


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
        if not any(name in known for stage in STAGES for name in stage.sources):
            wanted = ", ".join(dict.fromkeys(c for s in STAGES for c in s.sources))
            raise CalibrationError(f"{path}:1: no column to calibrate from (expected at least one of: {wanted})")
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
    """The values a stage is calibrated from (seconds) and a description of where they came from, or
    None when no column of the stage is there. Overheads pipesim models itself are subtracted.

    >>> stage_values(pd.DataFrame({"ttft": [0.5, 0.4], "llm_kafka": [0.1, 0.0]}), STAGES[2])
    (array([0.4, 0.4]), 'ttft - llm_kafka')
    """
    column = next((c for c in stage.sources if c in measurements.columns), None)
    if column is None:
        return None
    values = measurements[column].to_numpy(dtype=float)
    minus = []
    if column == "transcription_delay":
        if "end_of_utterance_delay" not in measurements.columns:
            raise CalibrationError(f"{measurements.attrs.get('source', '<measurements>')} transcription_delay: "
                                   f"needs end_of_utterance_delay in the same row (STT starts at the end of "
                                   f"the turn), or give stt_service instead")
        minus.append("end_of_utterance_delay")
    if column not in _DIRECT and stage.service:
        minus += [c for c in (f"{stage.service}_kafka", f"{stage.service}_queue", f"{stage.service}_retry")
                  if c in measurements.columns]
    for name in minus:
        values = values - measurements[name].fillna(0.0).to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    return np.maximum(values, 0.0), " - ".join([column, *minus])


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

    def scenario(self, name: str = "calibrated") -> dict[str, Any]:
        """A whole scenario (defaults for everything not measured) with the calibrated fields."""
        data: dict[str, Any] = {"name": name, "description": f"calibrated from {Path(self.source).name}"}
        for dotted, dist in self.chosen.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = dist
        return data

    def save(self, path: str | Path, name: str | None = None) -> Path:
        """Write the fragment as a YAML scenario that ``pipesim run PATH`` runs; returns the path.

        Empirical stages of more than :data:`MAX_INLINE_SAMPLES` samples go to ``<stem>.samples.csv``
        beside it (one column per stage), referenced by a relative ``csv:``.
        """
        path = Path(path)
        data = self.scenario(name or path.stem)
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
        header = [f"# Calibrated by `pipesim fit` from {Path(self.source).name}: a whole scenario (defaults for",
                  "# everything not measured). Run it with `pipesim run FILE`, or take its fields into another.",
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
    from pipesim.plots import _subplots

    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), pyplot=pyplot, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


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
    stages = {}
    for stage in STAGES:
        found = stage_values(frame, stage)
        if found is not None:
            stages[stage.name] = _fit_stage(stage, found[0], found[1], list(dict.fromkeys(families)), source)
    if not stages:
        wanted = ", ".join(dict.fromkeys(c for s in STAGES for c in s.sources))
        raise CalibrationError(f"{source}: no column to calibrate from (expected at least one of: {wanted})")
    return Calibration(source, stages)


def apply(scenario: Scenario | str | Path | dict[str, Any], calibration: Calibration) -> Scenario:
    """A copy of ``scenario`` (a Scenario, a dict, a file or a bundled name) with the calibrated fields.

    >>> cal = fit(pd.DataFrame({"end_of_utterance_delay": np.linspace(0.2, 0.6, 50)}), ["empirical"])
    >>> len(apply("baseline", cal).sessions.end_of_utterance_delay_s.samples)
    50
    """
    from pipesim.scenario import as_scenario

    return as_scenario(scenario).override(calibration.chosen)
