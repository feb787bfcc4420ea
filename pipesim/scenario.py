"""Scenario files: every number of the model, with sane defaults, validated by pydantic.

A scenario is YAML, TOML or JSON. Anything left out takes the default documented here, so the
smallest scenario is ``{}``. A wrong file gets one message per problem, naming the file, the line and
the field path::

    scenarios/x.yaml:14 services.llm.capacity: must be >= 1, got 0

Problems are listed in line order. A broken file (bad syntax, not UTF-8) is one such line too. Empirical
distributions read from a CSV (anywhere in the scenario) are read when the scenario is loaded, relative
to the scenario file's folder, so a missing or bad CSV is a load-time problem.

Limits. A file is refused, with one line saying which limit and where, if it is

* larger than :data:`MAX_FILE_BYTES` (1 MiB; nothing past it is read, so even a link to ``/dev/zero`` is
  refused at once);
* nested deeper than :data:`MAX_DEPTH` (32) lists/mappings (a scenario needs 6; the parsers recurse);
* holding an integer of more than :data:`MAX_INT_DIGITS` (640) digits (Python refuses ``int(str)`` beyond
  4300 by default, 640 at the lowest setting);
* YAML whose aliases expand to more than :data:`MAX_ALIAS_NODES` (100,000) nodes, or an alias inside its
  own anchor (counted while composing, so a "billion laughs" is refused in milliseconds);
* YAML with tags beyond the safe ones (``!!python/object`` and friends: only the safe loader is used);
* an empirical CSV larger than :data:`pipesim.distributions.MAX_CSV_BYTES` (64 MiB), with a field over
  Python's csv field limit (128 KiB), not UTF-8, empty, without the column, or with a value that is not
  a finite number >= 0 (the message names the CSV's line).

>>> scn = Scenario.model_validate({"name": "tiny", "sessions": {"arrivals": {"kind": "at_once", "count": 2}}})
>>> scn.services.llm.capacity
12
>>> scn.override({"services.llm.capacity": 2}).services.llm.capacity
2
"""

from __future__ import annotations

import copy
import difflib
import html
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tomlkit
import tomlkit.container
import tomlkit.exceptions
import tomlkit.items
import tomlkit.parser
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipesim import _jsonsafe
from pipesim.distributions import Distribution, Empirical, coerce_distribution, within
from pipesim.errors import ScenarioError
from pipesim.vocabulary import SERVICES, ServiceName

Dist = Annotated[Distribution, BeforeValidator(coerce_distribution)]
NonNeg = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]

# Bounds on what the model can run. A number past one of these is refused when the scenario is loaded,
# with the reason, rather than crashing or hanging the run. Every number must also be finite.
#: Any point in simulated time (``at``, ``start_s``, ``duration_s``, ramp times): ~11.6 days, far past any
#: test, and times stay exact to 1e-10 s.
MAX_TIME_S = 1_000_000.0
_TIME_WHY = "a run covers at most ~11.6 days of simulated time"
Time = Annotated[float, Field(ge=0), within(high=MAX_TIME_S, why=_TIME_WHY)]
#: New sessions per second (Poisson or ramp): 3.6 million an hour, past any pipeline this models.
MAX_RATE_PER_S = 1000.0
_RATE_WHY = "1,000 new sessions a second is 3.6 million an hour; to start everyone at once use kind: at_once"
Rate = Annotated[float, within(high=MAX_RATE_PER_S, why=_RATE_WHY)]
#: One utterance, scripted or drawn (longer draws are cut here): a streaming STT session closes long
#: before (Google's streaming recognition ends a stream after 5 minutes).
MAX_UTTERANCE_S = 300.0
#: Thinned ramp arrivals draw candidates at the peak rate over the ramp's whole span; past this many
#: candidates the arrivals alone would take minutes.
MAX_RAMP_CANDIDATES = 10_000_000
_DB_WHY = "real audio lies between -20 and 60 dB"
Decibels = Annotated[float, within(-300.0, 300.0, why=_DB_WHY)]


class _Section(BaseModel):
    # Unknown keys are typos: reject them, naming the keys that are allowed. inf and nan are refused: no
    # field of the model means anything at infinity.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True, validate_default=True,
                              allow_inf_nan=False)


# Audio and quality ---------------------------------------------------------------------------------
class Audio(_Section):
    """How user audio arrives. The buffer grows by whole chunks."""

    sample_rate_hz: Annotated[int, Field(ge=1000),
                              within(high=384_000, why="the highest rate audio hardware records at")] = 16_000
    bytes_per_sample: Annotated[int, Field(ge=1, le=4)] = 2
    channels: Annotated[int, Field(ge=1, le=8)] = 1
    # Compressed audio (e.g. Opus, 6-510 kbit/s): overrides the above.
    bitrate_bps: Annotated[int | None, Field(ge=1),
                           within(high=10_000_000, why="compressed speech is at most ~0.5 Mbit/s")] = None
    # At least 1 ms (Opus frames are 2.5 ms or more): an utterance is drawn chunk by chunk, and finer
    # chunks would only multiply the work.
    chunk_ms: Annotated[float, within(1.0, 1000.0, why="audio arrives in 1 ms to 1 s chunks")] = 20.0
    # How often buffer_size/audio_quality are reported while the user speaks. Reporting per chunk is
    # possible (set it to chunk_ms / 1000) but costs one event per chunk; more often than that would
    # repeat the same buffer.
    metadata_interval_s: Annotated[float | None, Field(gt=0)] = 0.25

    @field_validator("metadata_interval_s")
    @classmethod
    def _not_below_a_chunk(cls, value: float | None, info: ValidationInfo) -> float | None:
        chunk_s = info.data.get("chunk_ms", 20.0) / 1000.0
        if value is not None and value < chunk_s * (1 - 1e-9):
            raise ValueError(f"must be >= one chunk (audio.chunk_ms / 1000 = {chunk_s:g} s), got {value!r}: "
                             f"the buffer grows by whole chunks, so more frequent reports repeat themselves")
        return value

    @property
    def chunk_s(self) -> float:
        return self.chunk_ms / 1000.0

    @property
    def chunk_bytes(self) -> int:
        per_second = self.bitrate_bps / 8 if self.bitrate_bps else (
            self.sample_rate_hz * self.bytes_per_sample * self.channels)
        return max(1, round(per_second * self.chunk_s))


class Quality(_Section):
    """Chunk quality = logistic((SNR - midpoint_db) / scale_db). Each user has an SNR level drawn once
    (their microphone and room); each chunk adds noise around it. The session's ``audio_quality`` is the
    running mean over the utterance. Defaults give ~0.57 on average, as the seed's live session shows."""

    snr_mean_db: Decibels = 22.0
    snr_user_sd_db: Annotated[NonNeg, within(high=100.0, why=_DB_WHY)] = 5.0
    snr_chunk_sd_db: Annotated[NonNeg, within(high=100.0, why=_DB_WHY)] = 4.0
    midpoint_db: Decibels = 20.0
    scale_db: Annotated[float, within(0.01, 1000.0, why="the logistic's width in dB")] = 8.0
    # Below this running quality an utterance is "poor": STT is slower and may fail (the agent re-prompts).
    poor_threshold: Probability = 0.35
    poor_stt_latency_factor: Annotated[float, Field(ge=1), within(high=100.0, why="a slowdown factor")] = 1.5
    poor_stt_failure_probability: Probability = 0.3


# Services and Kafka ----------------------------------------------------------------------------------
class Outage(_Section):
    """A window of simulated time in which a topic's consumers take nothing: requests wait, then time out."""

    start_s: Time
    end_s: Time

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s must be after start_s, got start_s={self.start_s} end_s={self.end_s}")
        return self


#: Workers of one service: past this nothing ever queues, and a larger pool only costs memory.
_Capacity = Annotated[int, Field(ge=1), within(high=100_000, why="100,000 workers never queue")]


class _Service(_Section):
    capacity: Annotated[_Capacity, Field(description="Workers / replicas; a turn queues when all are busy.")]
    failure_probability: Probability = 0.0
    outages: list[Outage] = []


class STT(_Service):
    # Streaming STT, time from hand-off to the final segment: p50 ~250 ms, p95 ~300-360 ms
    # (pipecat-ai/stt-benchmark: Deepgram nova-3, AssemblyAI Universal-Streaming).
    capacity: _Capacity = 5
    latency_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 0.24, "p95": 0.34})


class LLM(_Service):
    # Time to first token 200-350 ms p50 for hosted chat models (GPT-4o-mini, Gemini Flash, Llama 70B on
    # Groq), with a long tail; ~50-100 tokens/s while streaming.
    capacity: _Capacity = 12
    ttft_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 0.26, "p95": 0.6})
    per_token_s: Dist = 0.015
    tokens: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 25, "p95": 70})
    # TTS starts on the first phrase, not the whole reply (how Pipecat and LiveKit aggregate text).
    first_sentence_tokens: Annotated[int, Field(ge=1), within(high=100_000, why="a phrase, not a book")] = 5


class TTS(_Service):
    # Streaming TTS time to first audio chunk 150-250 ms p50 (ElevenLabs Flash, Cartesia Sonic, Deepgram Aura).
    capacity: _Capacity = 16
    ttfb_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 0.18, "p95": 0.3})
    # Speech is ~150 words/min at ~0.75 words per token: 0.3 s of audio per token.
    audio_s_per_token: Annotated[float, Field(gt=0), within(high=60.0, why="speech is ~0.3 s per token")] = 0.3
    # Synthesis time per second of audio: a worker is busy for ttfb + audio * real_time_factor.
    real_time_factor: Annotated[float, Field(gt=0, le=2)] = 0.1


class Services(_Section):
    stt: STT = STT()
    llm: LLM = LLM()
    tts: TTS = TTS()


class Stalls(_Section):
    """Random broker stalls: a Poisson process of windows in which no message is delivered."""

    # At most one a second on average: more than that is an outage (use ``outages``), and each stall is
    # drawn as the run reaches it.
    rate_per_hour: Annotated[NonNeg, within(high=3600.0, why="more than one stall a second is an outage")] = 0.0
    duration_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 3.0, "p95": 10.0})


class ScheduledOutage(Outage):
    topics: list[ServiceName] = list(SERVICES)


class Kafka(_Section):
    """The hop between orchestrator and services, each way.

    A request whose first response has not reached the orchestrator ``request_timeout_s`` after it was
    sent times out: both Kafka legs, the wait in the consumer's queue for a worker and the worker's time to
    first response all count. It is retried after a backoff; past ``max_retries`` the turn fails. The
    timed-out request is still delivered: ``stale_requests`` says what its consumer does with it, ``served``
    (a Kafka consumer does not know the producer gave up: a worker does the stale work) or ``dropped`` (the
    consumer checks the request's deadline and skips it)."""

    # Produce-to-consume latency on a healthy cluster: a few ms.
    latency_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 0.004, "p95": 0.015})
    # Bounded so that a message's delivery is worked out over at most an hour of stalls.
    request_timeout_s: Annotated[float, Field(gt=0),
                                 within(high=3600.0, why="a request unanswered for an hour is lost")] = 2.0
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    backoff_s: Annotated[NonNeg, within(high=3600.0, why="an hour between retries")] = 0.1
    # backoff_s * backoff_multiplier ** max_retries must stay a finite number of seconds.
    backoff_multiplier: Annotated[float, Field(ge=1), within(high=10.0, why="backoff grows at most tenfold")] = 2.0
    stale_requests: Literal["served", "dropped"] = "served"
    stalls: Stalls = Stalls()
    outages: list[ScheduledOutage] = []


# Sessions --------------------------------------------------------------------------------------------
class AtOnce(_Section):
    kind: Literal["at_once"] = "at_once"
    count: Annotated[int, Field(ge=0, le=1_000_000)] = 100


class Poisson(_Section):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: Annotated[Rate, Field(gt=0)]
    count: Annotated[int | None, Field(ge=0, le=1_000_000)] = None  # stop after this many sessions
    duration_s: Annotated[Time | None, Field(gt=0)] = None  # or after this much time

    @model_validator(mode="after")
    def _bounded(self) -> Poisson:
        if self.count is None and self.duration_s is None:
            raise ValueError("give count or duration_s, or the arrivals never end")
        return self


class Ramp(_Section):
    """Poisson arrivals whose rate is piecewise linear through ``points`` ([time_s, rate_per_s] pairs):
    ramps, plateaus and spikes. Arrivals end at the last point."""

    kind: Literal["ramp"] = "ramp"
    points: Annotated[list[tuple[Time, Annotated[Rate, Field(ge=0)]]], Field(min_length=2)]

    @field_validator("points")
    @classmethod
    def _not_too_many_candidates(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        # Thinning draws candidates at the peak rate over the whole span, whatever the rate between.
        candidates = max(rate for _, rate in points) * (points[-1][0] - points[0][0])
        if candidates > MAX_RAMP_CANDIDATES:
            raise ValueError(f"peak rate x span = {candidates:,.0f} candidate arrivals, more than "
                             f"{MAX_RAMP_CANDIDATES:,}: arrivals are drawn at the peak rate over the whole ramp; "
                             f"shorten the ramp or lower its peak")
        return points

    @model_validator(mode="after")
    def _increasing(self) -> Ramp:
        times = [p[0] for p in self.points]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError(f"point times must increase, got {times}")
        return self


Arrivals = Annotated[AtOnce | Poisson | Ramp, Field(discriminator="kind")]


class ScriptStep(_Section):
    """One action of a scripted session at time ``at`` (seconds): speak for ``speak`` seconds, or one of
    the controls ``start`` (resume), ``pause``, ``stop``, or ``barge_in`` (talk over the bot)."""

    at: Time
    speak: Annotated[float | None, Field(gt=0),
                     within(high=MAX_UTTERANCE_S, why="a streaming STT session ends after 5 minutes")] = None
    action: Literal["start", "pause", "stop", "barge_in"] | None = None

    @model_validator(mode="after")
    def _one(self) -> ScriptStep:
        if (self.speak is None) == (self.action is None):
            raise ValueError("give exactly one of 'speak' (seconds) or 'action'")
        return self


class ScriptedSession(_Section):
    """A named session that does exactly what its timeline says, to reproduce one situation."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    timeline: Annotated[list[ScriptStep], Field(min_length=1)]
    snr_db: Decibels | None = None  # the user's audio level; default: the scenario's mean

    @model_validator(mode="after")
    def _sorted(self) -> ScriptedSession:
        times = [s.at for s in self.timeline]
        if times != sorted(times):
            raise ValueError(f"timeline must be in time order, got at={times}")
        return self


class Sessions(_Section):
    arrivals: Arrivals = AtOnce()
    id_prefix: Annotated[str, Field(min_length=1, max_length=50)] = "sim"
    turns: Dist = 5  # user turns per session (rounded, at least 1)
    first_speech_delay_s: Dist = Field(default_factory=lambda: {"kind": "uniform", "low": 0.5, "high": 2.0})
    utterance_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 1.8, "p95": 4.5})
    # End-of-utterance delay: the VAD/endpointing silence timeout, a few hundred ms (LiveKit's default
    # min_endpointing_delay is 0.5 s; Pipecat's smart-turn ends sooner on confident turn ends).
    end_of_utterance_delay_s: Dist = Field(default_factory=lambda: {"kind": "normal", "mean": 0.3, "sd": 0.03})
    think_time_s: Dist = Field(default_factory=lambda: {"kind": "lognormal", "p50": 0.8, "p95": 2.5})
    barge_in_probability: Probability = 0.1
    barge_in_after_s: Dist = Field(default_factory=lambda: {"kind": "uniform", "low": 0.3, "high": 3.0})
    # A turn that failed (Kafka, service error, poor audio) is said again, at most this many times.
    max_repeats: Annotated[int, Field(ge=0, le=10)] = 2
    scripted: list[ScriptedSession] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> Sessions:
        ids = [s.id for s in self.scripted]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"scripted session ids must be unique, repeated: {', '.join(dupes)}")
        return self


def _closest_path(data: dict[str, Any], dotted: str) -> str:
    """`` (did you mean 'x.y.z'?)`` for the existing field path closest to a misspelled one, or ``""``."""
    node: Any = data
    fixed = []
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return ""
        close = [part] if part in node else difflib.get_close_matches(part, [str(k) for k in node], n=1)
        if not close:
            return ""
        fixed.append(close[0])
        node = node[close[0]]
    return f" (did you mean {'.'.join(fixed)!r}?)"


def _valid_slo(text: str) -> str:
    from pipesim.slo import parse_slo  # here: pipesim.slo runs replications, which load scenarios

    parse_slo(text)
    return text


class Scenario(_Section):
    """Everything the model needs. Every field has a default; see ``scenarios/baseline.yaml``."""

    name: str = "unnamed"
    description: str = ""
    seed: Annotated[int, Field(ge=0), within(high=2**63 - 1, why="seeds are stored as 64-bit integers")] = 0
    duration_s: Annotated[Time | None, Field(gt=0)] = None  # stop the run here (default: when sessions end)
    audio: Audio = Audio()
    quality: Quality = Quality()
    services: Services = Services()
    kafka: Kafka = Kafka()
    sessions: Sessions = Sessions()
    #: Service-level objectives ``pipesim check`` judges, e.g. ``e2e_latency_p95 <= 1.5s`` (see :mod:`pipesim.slo`).
    slo: list[Annotated[str, AfterValidator(_valid_slo)]] = []

    def override(self, changes: dict[str, Any]) -> Scenario:
        """A copy with dotted-path fields replaced and the result validated.

        >>> Scenario().override({"kafka.request_timeout_s": 1.0}).kafka.request_timeout_s
        1.0
        """
        data = self.model_dump(mode="python")
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in [*parents, leaf]:
                if not isinstance(node, dict) or part not in node:
                    raise ScenarioError([f"{dotted}: no such field{_closest_path(data, dotted)}"])
                parent, node = node, node[part]
            parent[leaf] = copy.deepcopy(value)
        return validate_scenario(data, source="override")

    def _repr_html_(self) -> str:
        arr = self.sessions.arrivals
        rows = {
            "arrivals": arr.model_dump_json(exclude_none=True),
            "capacity (stt/llm/tts)": f"{self.services.stt.capacity}/{self.services.llm.capacity}/"
                                      f"{self.services.tts.capacity}",
            "kafka timeout / retries": f"{self.kafka.request_timeout_s} s / {self.kafka.max_retries}",
            "scheduled outages": str(len(self.kafka.outages) + sum(
                len(getattr(self.services, s).outages) for s in SERVICES)),
            "scripted sessions": str(len(self.sessions.scripted)),
            "seed": str(self.seed),
        }
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in rows.items())
        return (f"<b>Scenario {html.escape(self.name)}</b><br><i>{html.escape(self.description)}</i>"
                f"<table>{body}</table>")


# Loading, with errors that name file, line and field --------------------------------------------------
#: A scenario file is read only up to this size (hand-written settings; big data goes in a CSV).
MAX_FILE_BYTES = 1_048_576
#: Lists and mappings inside lists and mappings (a scenario needs 6; parsers recurse per level).
MAX_DEPTH = _jsonsafe.MAX_DEPTH
#: Digits of an integer literal (below Python's own ``int(str)`` limit, whatever the interpreter's setting).
MAX_INT_DIGITS = _jsonsafe.MAX_INT_DIGITS
#: Nodes that YAML aliases may add to a document when expanded (a "billion laughs" adds billions).
MAX_ALIAS_NODES = 100_000

_DIST_TAGS = {"constant", "exponential", "lognormal", "gamma", "uniform", "normal", "empirical",
              "at_once", "poisson", "ramp"}


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Drop pydantic's union/validator markers so the path is what the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and (p in _DIST_TAGS or "[" in p)))


def _section_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The scenario section class at a field path (None where the path goes through a union)."""
    model: Any = Scenario
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        for inner in getattr(annotation, "__args__", ()):  # list[X] -> X
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                annotation = inner
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _did_you_mean(given: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(given), allowed, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown_field(path: tuple[Any, ...]) -> str:
    section = _section_at(path[:-1])
    if section is None or not path:
        return "unknown field"
    allowed = [f.alias or name for name, f in section.model_fields.items()]
    return f"unknown field ({_did_you_mean(path[-1], allowed)}allowed: {', '.join(allowed)})"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message is one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


#: What a value of the wrong type should have been, by pydantic's error type.
_MUST_BE = {"float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
            "int_parsing": "a whole number", "int_from_float": "a whole number", "bool_type": "true or false",
            "bool_parsing": "true or false", "string_type": "text", "list_type": "a list", "tuple_type": "a list",
            "model_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
            "dict_type": "a mapping"}
_DISTRIBUTION_KINDS = ", ".join(cls.model_fields["kind"].default for cls in get_args(get_args(Distribution)[0]))


def _is_distribution(path: tuple[Any, ...]) -> bool:
    """Whether the field at ``path`` is a distribution (:data:`Dist`: a number or a mapping with a kind)."""
    section = _section_at(path[:-1]) if path else None
    field = section.model_fields.get(path[-1]) if section is not None else None
    return field is not None and any(getattr(m, "func", None) is coerce_distribution for m in field.metadata)


def _as_written(data: Any, path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a field path that the file has: a distribution written as a number (``turns: -3``) is
    validated as ``{kind: constant, value: -3}``, whose ``value`` its author never wrote."""
    node = data
    for i, part in enumerate(path):
        if (isinstance(node, dict) and part in node
                or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif not isinstance(node, dict | list):
            return path[:i]
        else:  # a field the file left out (a required one): named as the scenario has it
            return path
    return path


def _message(err: dict[str, Any], path: tuple[Any, ...]) -> str:
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind in ("model_attributes_type", "model_type") and _is_distribution(path):
        return (f"must be a number or a distribution, a mapping with a kind ({_DISTRIBUTION_KINDS}) and its "
                f"parameters, got {_short(given)}")
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}, got {_short(given)}"
    if kind == "extra_forbidden":
        return _unknown_field(_field_path(err["loc"]))
    if kind == "missing":
        return "required field is missing"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return f"must be {bounds[kind]} {limit}, got {_short(given)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("literal_error", "union_tag_invalid"):
        expected = str(ctx.get("expected") or ctx.get("expected_tags"))
        given = ctx.get("tag", given)  # a union tag: the kind given, not the whole mapping
        hint = _did_you_mean(given, re.findall(r"'([^']*)'", expected)).rstrip()
        return f"must be one of {expected}, got {_short(given)}" + (f" ({hint})" if hint else "")
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_short(given)}"


# Parsers with limits, and where each value of a file is ------------------------------------------------
class _LimitedYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing (while composing) nesting deeper than MAX_DEPTH, alias expansions
    beyond MAX_ALIAS_NODES, aliases inside their own anchor, and integers longer than MAX_INT_DIGITS."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections open around the node being composed
        self._open_anchors: set[str] = set()
        self._alias_nodes = 0
        self._extents: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        anchor = event.anchor
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  event.start_mark)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= collection
            self._open_anchors.discard(anchor)

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # PyYAML reports an undefined alias itself
        if event.anchor in self._open_anchors:
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refers to the node that holds it",
                                              event.start_mark)
        size, height = self._extent(node)
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (a 'billion laughs'?)",
                event.start_mark)
        if self._depth + height > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} nests deeper than "
                                              f"{MAX_DEPTH} levels", event.start_mark)

    def _extent(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, levels of collections) of a composed node with its aliases expanded. Recursion is
        bounded: every composed node already passed the depth checks."""
        known = self._extents.get(id(node))
        if known is not None:
            return known
        size, height = 1, 0
        if isinstance(node, yaml.CollectionNode):
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                child_size, child_height = self._extent(child)
                size, height = size + child_size, max(height, child_height)
            height += 1
        self._extents[id(node)] = (size, height)
        return size, height


def _construct_bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {digits} digits (the limit is {MAX_INT_DIGITS})", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_LimitedYAMLLoader.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)


def _compose_yaml(text: str) -> yaml.Node | None:
    loader = _LimitedYAMLLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _load_yaml(text: str) -> Any:
    loader = _LimitedYAMLLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _TomlParser(tomlkit.parser.Parser):
    """tomlkit's parser, noting where each key, value and table header starts (tomlkit keeps the
    document's structure but not positions)."""

    MAX_NESTING_DEPTH = MAX_DEPTH  # tomlkit's own guard against deep arrays, inline tables and dotted keys

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.starts: dict[int, int] = {}  # id(key or item) -> index in the text
        self.blame: int | None = None  # where an error not raised while reading the text belongs
        self._keep: list[Any] = []  # keeps noted objects alive, so their ids are not reused

    def _note(self, obj: Any, start: int) -> None:
        if id(obj) not in self.starts:
            self.starts[id(obj)] = start
            self._keep.append(obj)

    def _parse_value(self) -> Any:
        self.blame = None
        start = self._idx
        value = super()._parse_value()
        if isinstance(value, tomlkit.items.Integer):
            digits = sum(c.isdigit() for c in value.as_string())
            if digits > MAX_INT_DIGITS:
                raise self.parse_error(tomlkit.exceptions.ParseError,
                                       f"an integer of {digits} digits (the limit is {MAX_INT_DIGITS})")
        self._note(value, start)
        return value

    def _parse_table(self, parent_name: Any = None, parent: Any = None) -> Any:
        start = self._idx
        self.blame = None
        header = [part.key for part in self._peek_table()[1]][len(tuple(parent_name or ())):]
        key, table = super()._parse_table(parent_name, parent)
        # The table this header opens: [a.b.c] returns table a, with b and c inside.
        opened = table
        for name in header[1:]:
            opened = next((child for n, child, _ in _toml_children(_last(opened)) if n == name), opened)
        self._note(_last(opened), start)
        self.blame = start  # appending the table to its parent may still fail (a duplicate)
        return key, table

    def _parse_key(self) -> Any:
        self.blame = None
        start = self._idx
        key = super()._parse_key()
        for part in (key, *key):  # a dotted key's parts become the keys of nested tables
            self._note(part, start)
        return key


def _last(item: Any) -> Any:
    return item.body[-1] if isinstance(item, tomlkit.items.AoT) else item


def _parse_toml(text: str) -> tuple[Any, _TomlParser]:
    """The document and the parser that noted its positions. A syntax error is a ``_SyntaxError``."""
    parser = _TomlParser(text)
    try:
        return parser.parse(), parser
    except tomlkit.exceptions.TOMLKitError as exc:
        message = re.sub(r" at line \d+ col \d+$", "", str(exc))
        message = re.sub(r"^TOML (value|key) nested more than \d+ levels deep$",
                         f"nested deeper than {MAX_DEPTH} levels", message)
        where = parser.blame if parser.blame is not None else parser._idx
        raise _SyntaxError(message, _line_at(text, where)) from None


class _SyntaxError(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _toml_children(item: Any) -> list[tuple[Any, Any, Any]]:
    """(key or index, child, the key object or None) of a tomlkit container, table, array or AoT."""
    if isinstance(item, tomlkit.items.AoT):
        return [(i, table, None) for i, table in enumerate(item.body)]
    if isinstance(item, tomlkit.items.Array):
        return [(i, value, None) for i, value in enumerate(item)]
    container = item if isinstance(item, tomlkit.container.Container) else getattr(item, "value", None)
    if isinstance(container, tomlkit.container.Container):
        return [(key.key, value, key) for key, value in container.body if key is not None]
    return []


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _yaml_friendly(match: re.Match[str]) -> str:
    """A JSON string as YAML reads it on the same line: YAML has no ``\\/`` escape and no key longer
    than 1024 characters (such a key is not found, and its problem takes its parent's line)."""
    string = match.group()
    if len(string) > 1000:
        return '"(long)"'
    return string.replace("\\/", "/")


class _LineFinder:
    """Maps a field path to the line of the source text where it is (or its closest ancestor is)."""

    def __init__(self, text: str, fmt: str) -> None:
        self.text, self.fmt = text, fmt
        self._root: Any = None
        self._starts: dict[int, int] = {}
        self._parsed = False  # parsed again on the first question: only a file with problems needs it

    def _parse(self) -> None:
        self._parsed = True
        try:
            if self.fmt == "toml":
                self._root, parser = _parse_toml(self.text)
                self._starts = parser.starts
            elif self.fmt == "json":  # through YAML's composer, which keeps marks
                self._root = _compose_yaml(_JSON_STRING.sub(_yaml_friendly, self.text.replace("\t", " ")))
            else:
                self._root = _compose_yaml(self.text)
        except (yaml.YAMLError, _SyntaxError):
            self._root = None

    def line(self, path: tuple[Any, ...]) -> int | None:
        if not self._parsed:
            self._parse()
        if self._root is None:
            return None
        if self.fmt == "toml":
            return self._toml_line(self._root, path, 1)[1]
        node, line = self._root, self._root.start_mark.line + 1
        for part in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == str(part):
                        child, line = value, key.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line

    def _toml_line(self, item: Any, path: tuple[Any, ...], line: int) -> tuple[int, int]:
        """(how many parts of ``path`` were found, the line of the deepest). A table may be split over
        several headers (``[services.stt]`` ... ``[services.llm]``): every candidate is tried."""
        best = (0, line)
        if not path:
            return best
        for name, child, key in _toml_children(item):
            if name != path[0] and str(name) != str(path[0]):
                continue
            start = self._starts.get(id(child), self._starts.get(id(key)))
            child_line = _line_at(self.text, start) if start is not None else line
            found, found_line = self._toml_line(child, path[1:], child_line)
            if found + 1 > best[0]:
                best = (found + 1, found_line)
        return best


def _too_deep(data: Any) -> tuple[Any, ...] | None:
    """The path of the first list or mapping nested deeper than MAX_DEPTH, if any (without recursion)."""
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, (*path, key), depth + 1) for key, child in items)
    return None


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".toml":
        return "toml"
    if suffix == ".json":
        return "json"
    raise ScenarioError([f"{path}: unknown scenario format {suffix!r} (use .yaml, .yml, .toml or .json)"])


def _parse_text(text: str, fmt: str, where: str) -> Any:
    """Parse a scenario's text within the limits above; any failure is one ``file:line: message``."""
    try:
        if fmt == "toml":
            data = _parse_toml(text)[0].unwrap()
        elif fmt == "json":
            data = _jsonsafe.loads(text)
        else:
            data = _load_yaml(text)
    except _SyntaxError as exc:
        raise ScenarioError([f"{where}:{exc.line}: invalid TOML: {_one_line(exc.message, 300)}"]) from None
    except json.JSONDecodeError as exc:
        raise ScenarioError([f"{where}:{exc.lineno}: invalid JSON: {exc.msg}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ScenarioError([f"{where}{line}: invalid YAML: {_one_line(str(exc.problem), 300)}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        raise ScenarioError([f"{where}:{_line_at(text, exc.position)}: invalid YAML: character "
                             f"{exc.character!r} is not allowed"]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([f"{where}: invalid YAML: {_one_line(str(exc), 300)}"]) from None
    deep = _too_deep(data)  # TOML's tables and dotted keys nest without brackets
    if deep is not None:
        line = _LineFinder(text, fmt).line(deep) or 1
        raise ScenarioError([f"{where}:{line}: nested deeper than {MAX_DEPTH} levels"])
    return data


def _problem(source: str, line: int | None, path: tuple[Any, ...], message: str) -> tuple[int, str]:
    """(line, ``file:line field: message``): problems are sorted by line."""
    where = f"{source}:{line}" if line else source
    dotted = ".".join(_one_line(str(p), 40) for p in path) or "(top level)"
    return line or 0, f"{where} {dotted}: {_one_line(message, 500)}"


def _one_line(text: str, limit: int) -> str:
    """``text`` with control characters escaped (a key or a CSV name may hold a newline), cut to ``limit``."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def validate_scenario(data: Any, source: str = "<scenario>", text: str | None = None, fmt: str = "yaml",
                      base_dir: Path | None = None) -> Scenario:
    """Validate already-parsed data; errors name ``source``, the line (when ``text`` is given) and field.

    Empirical distributions given as a CSV file are read here, relative to ``base_dir`` (default: the
    current folder), so that a missing or bad file is a validation problem.

    >>> validate_scenario({"services": {"llm": {"capacity": 4}}}).services.llm.capacity
    4
    """
    if data is None:
        data = {}
    finder = _LineFinder(text, fmt) if text is not None else None
    if not isinstance(data, dict):
        line = finder.line(()) if finder else None
        raise ScenarioError([f"{source}{f':{line}' if line else ''}: a scenario must be a mapping of sections, "
                             f"got {type(data).__name__}"])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _as_written(data, _field_path(err["loc"]))
            problems.append(_problem(source, finder.line(path) if finder else None, path, _message(err, path)))
        raise ScenarioError([text for _, text in sorted(problems, key=lambda p: p[0])]) from None
    return _resolve_files(scenario, base_dir or Path.cwd(), source, finder)


def _empirical_files(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Empirical]]:
    """Every empirical distribution still to be read from a CSV, anywhere in a scenario, with its path
    (as ``model_dump`` names it)."""
    if isinstance(value, Empirical):
        return [(path, value)] if value.samples is None else []
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in _empirical_files(item, (*path, i))]
    if isinstance(value, BaseModel):
        return [found for name, field in type(value).model_fields.items()
                for found in _empirical_files(getattr(value, name), (*path, field.alias or name))]
    return []


def _resolve_files(scenario: Scenario, base_dir: Path, source: str, finder: _LineFinder | None = None) -> Scenario:
    """Load every empirical CSV now (relative to ``base_dir``), so that a bad file is a load-time error."""
    found = _empirical_files(scenario)
    if not found:
        return scenario
    data = scenario.model_dump(mode="python")
    problems = []
    for path, dist in found:
        try:
            resolved = dist.resolved(base_dir)
        except ValueError as exc:
            problems.append(_problem(source, finder.line(path) if finder else None, path, str(exc)))
            continue
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = resolved.model_dump()
    if problems:
        raise ScenarioError([text for _, text in sorted(problems, key=lambda p: p[0])])
    return Scenario.model_validate(data)


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file (YAML, TOML or JSON), or a bundled scenario by name.

    Raises :class:`ScenarioError` with one message per problem (file, line, field path), in line order.
    A file over :data:`MAX_FILE_BYTES`, nested deeper than :data:`MAX_DEPTH`, with an integer longer than
    :data:`MAX_INT_DIGITS` or YAML aliases expanding beyond :data:`MAX_ALIAS_NODES` is refused.

    >>> load_scenario("baseline").name
    'baseline'
    """
    path = scenario_path(path)
    fmt = _format_for(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # a bound, whatever the file (even /dev/zero) holds
            size = max(len(raw), os.fstat(fh.fileno()).st_size)
    except FileNotFoundError:
        raise ScenarioError([f"{path}: no such file; {_bundled_hint(path)}"]) from None
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if size > MAX_FILE_BYTES:
        raise ScenarioError([f"{path}: the file is {size:,} bytes, the limit is {MAX_FILE_BYTES:,}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError([f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})"]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
    data = _parse_text(text, fmt, str(path))
    return validate_scenario(data, source=str(path), text=text, fmt=fmt, base_dir=path.parent)


#: The bundled scenarios ship inside the package (``pipesim/scenarios/``; a clone links ``scenarios/`` to it),
#: so an installed wheel finds them as a checkout does.
BUNDLED_DIR = Path(__file__).resolve().parent / "scenarios"


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with pipesim.

    >>> "baseline" in bundled_scenarios()
    True
    """
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """A path as given, or the file of a bundled scenario's name (``baseline`` -> ``.../scenarios/baseline.yaml``).

    A bare name (no suffix) that is not an existing file is looked up among the bundled scenarios.
    Raises :class:`ScenarioError` for a bare name that is neither a file nor a bundled scenario.

    >>> scenario_path("baseline").name
    'baseline.yaml'
    """
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    bundled = BUNDLED_DIR / f"{path.name}.yaml"
    if bundled.exists():
        return bundled
    raise ScenarioError([f"{path}: no such file, and no bundled scenario of that name; {_bundled_hint(path)}"])


def _bundled_hint(missing: Path) -> str:
    """What to run instead of a missing scenario file: the closest bundled name, and how to get the files.

    >>> _bundled_hint(Path("scenarios/kafka_timeouts.yaml")).split("? ")[0]
    "did you mean the bundled scenario 'kafka_timeouts' (its name, not a path)"
    """
    names = bundled_scenarios()
    close = difflib.get_close_matches(missing.stem, names, n=1)
    if close:
        as_name = " (its name, not a path)" if missing.suffix or missing.parent != Path() else ""
        return (f"did you mean the bundled scenario '{close[0]}'{as_name}? "
                "`pipesim examples DIR` copies the bundled files into DIR")
    return f"bundled scenarios: {', '.join(names)}; `pipesim examples DIR` copies them into DIR"


def as_scenario(value: Scenario | str | Path | dict[str, Any]) -> Scenario:
    """Accept a Scenario, a dict, a file path or a bundled scenario name."""
    if isinstance(value, Scenario):
        return value
    if isinstance(value, dict):
        return validate_scenario(value, source="<dict>")
    return load_scenario(value)
