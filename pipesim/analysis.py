"""From a trace to tidy pandas DataFrames and summaries: where every millisecond goes.

Use it through :class:`pipesim.Results`; the functions here take DataFrames so that they also work on
turns loaded from Parquet or concatenated across runs.

>>> import pandas as pd
>>> turns = pd.DataFrame({"e2e_latency": [0.9, 1.1, 1.4], "scenario": ["a", "a", "b"]})
>>> percentiles(turns, ["e2e_latency"])["p50"].round(2).tolist()
[1.1]
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from pipesim.protocol import wire_messages
from pipesim.trace import Trace, transitions

#: The stages of voice-to-voice latency, in the order they happen; they add up to ``e2e_latency``.
STAGES = ("end_of_utterance_delay", "stt_stage", "llm_stage", "tts_stage")
#: The figures a summary reports, with the names Pipecat / LiveKit Agents users know.
FIGURES = (*STAGES, "ttft", "ttfb", "e2e_latency")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def percentiles(df: pd.DataFrame, columns: Sequence[str] = FIGURES, by: str | Sequence[str] | None = None,
                ) -> pd.DataFrame:
    """count, mean, p50, p90, p95, p99 and max of each column (seconds), overall or per group.

    One row per column (and group), so the result reads top-down and plots directly.
    """
    columns = [c for c in columns if c in df.columns]

    def one(frame: pd.DataFrame) -> pd.DataFrame:
        data = frame[columns]
        out = pd.DataFrame({"count": data.count(), "mean": data.mean()})
        for name, q in QUANTILES.items():
            out[name] = data.quantile(q)
        out["max"] = data.max()
        out.index.name = "figure"
        return out

    if by is None:
        return one(df)
    keys = [by] if isinstance(by, str) else list(by)
    parts = {key: one(group) for key, group in df.groupby(keys if len(keys) > 1 else keys[0], observed=True)}
    return pd.concat(parts, names=keys)


def sessions_frame(trace: Trace, turns: pd.DataFrame) -> pd.DataFrame:
    """One row per session: when it was created and ended, its turns by outcome, timeouts, latency."""
    ev = trace.events_frame()
    life = ev[ev["event"].isin(["session_created", "session_stopped"])].pivot_table(
        index="session_id", columns="event", values="t", aggfunc="first")
    life = life.reindex(columns=["session_created", "session_stopped"]).rename(
        columns={"session_created": "created", "session_stopped": "ended"})
    if turns.empty:
        counts = pd.DataFrame(index=life.index)
    else:
        counts = pd.crosstab(turns["session_id"], turns["outcome"])
        stats = turns.groupby("session_id").agg(
            turns=("turn_id", "count"),
            kafka_timeouts=("stt_timeouts", "sum"),
            e2e_p50=("e2e_latency", "median"),
            e2e_max=("e2e_latency", "max"),
            audio_quality=("audio_quality", "mean"),
        )
        stats["kafka_timeouts"] += turns.groupby("session_id")[["llm_timeouts", "tts_timeouts"]].sum().sum(axis=1)
        counts = stats.join(counts)
    out = life.join(counts, how="outer")
    for outcome in ("complete", "barge_in", "failed", "cancelled"):
        out[outcome] = out[outcome].fillna(0).astype("int64") if outcome in out else 0
    out["turns"] = out["turns"].fillna(0).astype("int64") if "turns" in out else 0
    out["duration"] = out["ended"] - out["created"]
    out.index.name = "session_id"
    return out.reset_index()


def messages_frame(trace: Trace) -> pd.DataFrame:
    """The wire messages a dashboard watching every session would have received, in order."""
    rows = []
    for tr in transitions(trace):
        for msg in wire_messages(tr):
            rows.append((tr.t, tr.session_id, tr.seq, msg["type"], json.dumps(msg, separators=(",", ":"))))
    return pd.DataFrame(rows, columns=["t", "session_id", "seq", "type", "message"])


def summary_table(turns: pd.DataFrame) -> pd.DataFrame:
    """The run's headline table in milliseconds: p50/p95/p99 of every stage and of voice-to-voice."""
    table = percentiles(turns, FIGURES)[["count", "p50", "p95", "p99", "max"]]
    ms = table[["p50", "p95", "p99", "max"]].mul(1000).round(0)
    ms.columns = [f"{c}_ms" for c in ms.columns]
    return table[["count"]].join(ms)


def counts(turns: pd.DataFrame) -> dict[str, int]:
    """Turns by outcome, Kafka timeouts and failures of a run."""
    outcome = turns["outcome"].value_counts() if not turns.empty else pd.Series(dtype="int64")
    timeouts = int(turns[["stt_timeouts", "llm_timeouts", "tts_timeouts"]].sum().sum()) if not turns.empty else 0
    return {
        "turns": int(len(turns)),
        "complete": int(outcome.get("complete", 0)),
        "barge_in": int(outcome.get("barge_in", 0)),
        "failed": int(outcome.get("failed", 0)),
        "cancelled": int(outcome.get("cancelled", 0)),
        "kafka_timeouts": timeouts,
    }


def sweep(scenario: object, param: str, values: Sequence[object], seeds: Sequence[int] = (0,),
          progress: bool | None = None) -> pd.DataFrame:
    """Run ``scenario`` once per value of the dotted ``param`` and seed; one row per run with the
    p50/p95/p99 voice-to-voice latency (seconds), turns and failures.

    >>> table = sweep({"sessions": {"arrivals": {"kind": "at_once", "count": 20}}},
    ...               "services.llm.capacity", [1, 4], progress=False)
    >>> table.index.names
    FrozenList(['services.llm.capacity', 'seed'])
    """
    from pipesim.results import simulate
    from pipesim.scenario import as_scenario

    base = as_scenario(scenario)  # type: ignore[arg-type]
    runs = [(value, seed) for value in values for seed in seeds]
    rows = []
    iterator: object = runs
    if progress is not False:
        from tqdm.auto import tqdm

        iterator = tqdm(runs, desc=f"sweep {param}", disable=None if progress is None else not progress)
    for value, seed in iterator:  # type: ignore[attr-defined]
        res = simulate(base.override({param: value}), seed=seed, progress=False)
        e2e = res.turns["e2e_latency"]
        c = res.counts()
        rows.append({param: value, "seed": seed, "turns": c["turns"], "failed": c["failed"],
                     "kafka_timeouts": c["kafka_timeouts"], "e2e_p50": e2e.quantile(0.5),
                     "e2e_p95": e2e.quantile(0.95), "e2e_p99": e2e.quantile(0.99)})
    return pd.DataFrame(rows).set_index([param, "seed"])
