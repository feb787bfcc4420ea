"""The scenario's schema: every number of the model as a pydantic model, with its default and its bounds.

Each default cites the published figure it comes from. :func:`validate_scenario` turns parsed data into a
:class:`Scenario`, or a :class:`~pipesim.errors.ScenarioError` naming the file, line and field of each problem
(:mod:`pipesim.scenario.validation`); reading a file is :mod:`pipesim.scenario.files`.

>>> Scenario().override({"services.llm.capacity": 2}).services.llm.capacity
2
"""

from __future__ import annotations

import copy
import difflib
import html
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipesim.distributions import Distribution, coerce_distribution, within
from pipesim.errors import ScenarioError
from pipesim.scenario.validation import validate_model
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


def validate_scenario(data: Any, source: str = "<scenario>", text: str | None = None, fmt: str = "yaml",
                      base_dir: Path | None = None) -> Scenario:
    """Validate already-parsed data; errors name ``source``, the line (when ``text`` is given) and field.

    Empirical distributions given as a CSV file are read here, relative to ``base_dir`` (default: the
    current folder), so that a missing or bad file is a validation problem.

    >>> validate_scenario({"services": {"llm": {"capacity": 4}}}).services.llm.capacity
    4
    """
    return validate_model(Scenario, data, source, text, fmt, base_dir)
