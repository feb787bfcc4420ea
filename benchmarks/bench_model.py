"""Offline model speed against bare SimPy, measured side by side in one run (shared machines are noisy:
absolute times are not the figure to watch, ratios are).

Three parts:

1. **skeleton**: a bare-SimPy model of the same pipeline, written here (same actors, stages, resources and
   audio reports per turn, numpy draws in blocks; no state manager, no trace), run in this process,
   interleaved with pipesim's ``baseline``, ``--repeat`` times. Reports turns per second of each and the
   ratio pipesim / skeleton (target >= 0.5). In the same rounds, pipesim twice more with parts taken away
   (**where the CPU goes**): without its trace (turns only), then also with a bare state manager (turn numbers
   and the retry budget only): the shares of the trace, the state manager and the simulation itself; the
   runs are checked to simulate the same thing (same SimPy events, same turns).
2. **events**: SimPy events per second of pipesim against a bare ``env.timeout`` loop with as many live
   processes as pipesim had on average (target >= 30%).
3. **sizes**: ``baseline`` with 1,000 / 10,000 / 100,000 sessions, each in a fresh subprocess, run as
   the README tells users to run a big study (the trace streamed to a run folder): turns/s, simulated
   seconds per wall second, the run's peak RSS and, apart, the peak while the DataFrames are built, bytes
   of memory per trace event, DataFrame build time against run time, the peak and time of saving the
   run (``Results.save``: the messages, built a row group at a time), and how flat the per-turn cost
   stays from the smallest size to the largest.

Rates are per CPU second of this process (``time.process_time``): on a machine shared with other jobs that
is steadier than wall time; wall times are reported beside them.

    .venv/bin/python benchmarks/bench_model.py                      # the full run (minutes)
    .venv/bin/python benchmarks/bench_model.py --sizes 1000 10000 --repeat 5
    .venv/bin/python benchmarks/bench_model.py --quick              # CI smoke: tiny, asserts no speed

Prints a table and writes JSON to ``out/bench/model.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import simpy

import pipesim
from pipesim.errors import PipesimError
from pipesim.model import Simulation
from pipesim.scenario import Scenario
from pipesim.trace import Trace

SCENARIO = "baseline"


# 1. The bare-SimPy skeleton -----------------------------------------------------------------------------
class _Blocks:
    """One draw per call from a pipesim distribution, drawn from numpy in blocks of 1,024."""

    __slots__ = ("_draw", "_block", "_i")

    def __init__(self, draw: Callable[[int], np.ndarray]) -> None:
        self._draw, self._block, self._i = draw, [], 0

    def __call__(self) -> float:
        if self._i >= len(self._block):
            self._block, self._i = self._draw(1024).tolist(), 0
        self._i += 1
        return self._block[self._i - 1]


def run_skeleton(scn: Scenario) -> dict[str, float]:
    """The same pipeline in bare SimPy: Poisson arrivals; per session a user process (first speech, then
    per turn: audio reports every ``metadata_interval_s`` while speaking, end of utterance, wait for the
    reply or barge in, think); per turn a pipeline process (STT, then TTS once the LLM's first phrase is
    out) and an LLM process streaming tokens; each service call a Kafka leg, a ``simpy.Resource`` worker
    held for its busy time, the answer's Kafka leg. Kafka timeouts and retries are left out (baseline
    rarely has any); everything pipesim adds on top (state manager, trace, per-session streams) too."""
    env = simpy.Environment()
    rng = np.random.default_rng(scn.seed)
    u, sv, audio = scn.sessions, scn.services, scn.audio

    def blocks(dist: Any) -> _Blocks:
        return _Blocks(lambda n: dist.draw(rng, n))

    first_speech, utterance = blocks(u.first_speech_delay_s), blocks(u.utterance_s)
    eou, think, barge_after = blocks(u.end_of_utterance_delay_s), blocks(u.think_time_s), blocks(u.barge_in_after_s)
    stt_latency, ttft, per_token = blocks(sv.stt.latency_s), blocks(sv.llm.ttft_s), blocks(sv.llm.per_token_s)
    tokens_of, ttfb, kafka = blocks(sv.llm.tokens), blocks(sv.tts.ttfb_s), blocks(scn.kafka.latency_s)
    uniform = _Blocks(rng.random)
    pools = {name: simpy.Resource(env, getattr(sv, name).capacity) for name in ("stt", "llm", "tts")}
    interval, chunk_s = audio.metadata_interval_s or math.inf, audio.chunk_s
    turns_per_session = max(1, round(u.turns.sampler(rng)()))
    done = [0]

    def call(name: str, first_response: float, busy: float) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(kafka())
        pool = pools[name]
        req = pool.request()
        yield req
        env.timeout(busy).callbacks.append(lambda _ev: pool.release(req))
        yield env.timeout(first_response + kafka())

    def llm(tokens: int, first_sentence: simpy.Event, llm_done: simpy.Event) -> Generator[simpy.Event, Any, None]:
        first, pt = ttft(), per_token()
        yield from call("llm", first, first + (tokens - 1) * pt)
        phrase = min(sv.llm.first_sentence_tokens, tokens)
        yield env.timeout((phrase - 1) * pt)
        first_sentence.succeed()
        yield env.timeout((tokens - phrase) * pt)
        llm_done.succeed()

    def pipeline(finished: simpy.Event) -> Generator[simpy.Event, Any, None]:
        latency = stt_latency()
        yield from call("stt", latency, latency)
        tokens = max(1, round(tokens_of()))
        first_sentence, llm_done = env.event(), env.event()
        env.process(llm(tokens, first_sentence, llm_done))
        yield first_sentence
        audio_s = tokens * sv.tts.audio_s_per_token
        first = ttfb()
        yield from call("tts", first, first + audio_s * sv.tts.real_time_factor)
        if uniform() < u.barge_in_probability and (barge := barge_after()) < audio_s:
            yield env.timeout(barge)
            finished.succeed("barge_in")
            return
        yield env.timeout(audio_s)
        if not llm_done.triggered:
            yield llm_done
        finished.succeed("complete")

    def user() -> Generator[simpy.Event, Any, None]:
        yield env.timeout(first_speech())
        for _ in range(turns_per_session):
            t0, duration = env.now, min(max(utterance(), chunk_s), 600.0)
            k = 1
            while k * interval < duration:  # the running audio reports
                yield env.timeout(t0 + k * interval - env.now)
                k += 1
            yield env.timeout(t0 + duration - env.now)
            yield env.timeout(eou())
            finished = env.event()
            env.process(pipeline(finished))
            outcome = yield finished
            done[0] += 1
            if outcome != "barge_in":
                yield env.timeout(think())

    def arrivals() -> Generator[simpy.Event, Any, None]:
        gaps = _Blocks(lambda n: rng.exponential(1.0 / u.arrivals.rate_per_s, n))
        for _ in range(u.arrivals.count):
            yield env.timeout(gaps())
            env.process(user())

    env.process(arrivals())
    cpu, wall = time.process_time(), time.perf_counter()
    env.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"turns": done[0], "events": next(env._eid), "cpu_s": cpu, "wall_s": wall, "sim_s": env.now}


def run_pipesim(scn: Scenario, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """pipesim's model on ``scn``, timed from construction to the end of the run (no DataFrames).

    ``without`` takes parts of pipesim away, to see what each costs (where the CPU goes): ``"trace"`` records only the
    turns (no transitions, model events, service samples), ``"manager"`` drives a :class:`_BareManager`
    instead of the real state manager. The simulation is the same either way: the same SimPy events, the
    same draws, the same turns (``turns_digest`` says so)."""
    cpu, wall = time.process_time(), time.perf_counter()
    sim = Simulation(scn)
    if "manager" in without:
        sim.manager = _BareManager(scn.kafka.max_retries)  # type: ignore[assignment]
    if "trace" in without:
        _record_turns_only(sim)
    sim.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    turns = sim.trace.turns_frame()
    digest = pd.util.hash_pandas_object(turns, index=False).sum().item()
    return {"turns": len(turns), "events": next(sim.env._eid), "cpu_s": cpu, "wall_s": wall, "sim_s": sim.env.now,
            "turns_digest": digest}


class _Reply(NamedTuple):
    """What the model reads of a transition: the turn's number, the event and its error."""

    turn_id: int
    event: str = ""
    error: str | None = None


class _BareManager:
    """The least a state manager must tell the model: turn numbers and when Kafka's retry budget fails a
    turn (the real one's words). No rule checked, no state kept for a dashboard, nothing recorded: with it,
    pipesim's model runs the very same simulation, without the state manager's cost."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries
        self._turn: dict[str, int] = {}
        self._retries: dict[str, dict[str, int]] = {}

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._turn

    def create_session(self, session_id: str, t: float) -> _Reply:
        self._turn[session_id] = 0
        return _Reply(0)

    def speech_started(self, session_id: str, t: float) -> _Reply:
        return _Reply(self._turn[session_id])

    def utterance_ended(self, session_id: str, t: float) -> _Reply:
        self._turn[session_id] += 1
        self._retries[session_id] = {}
        return _Reply(self._turn[session_id])

    def kafka_timeout(self, session_id: str, service: str, t: float) -> _Reply:
        retries = self._retries[session_id]
        retries[service] = n = retries.get(service, 0) + 1
        if n > self.max_retries:
            return _Reply(self._turn[session_id], "turn_failed",
                          f"{service}: Kafka timed out {n} times (retry budget {self.max_retries})")
        return _Reply(self._turn[session_id], "kafka_timeout")

    def _nothing(self, session_id: str, *args: Any) -> _Reply:
        return _Reply(self._turn[session_id])

    start = stop = barge_in = audio = service_requested = service_started = service_completed = _nothing
    service_failed = _nothing


def _record_turns_only(sim: Simulation) -> None:
    """Let ``sim``'s trace record its turns (what the runs are compared by) and nothing else."""
    sim.manager._observers = (lambda tr: None,)  # the cheapest observer: the transitions are still made
    sim._service_sample = lambda *row: None
    sim.trace = _TurnsOnly(sim.trace.header)


class _TurnsOnly(Trace):
    __slots__ = ()

    def model_event(self, *args: Any, **kwargs: Any) -> None:
        pass


def live_processes(scn: Scenario) -> float:
    """The mean number of events waiting in pipesim's SimPy queue over a run (measured in an untimed run):
    what the bare loop below keeps alive, so both heaps are of the same size."""
    sim = Simulation(scn)
    env, sizes, step = sim.env, [], sim.env.step

    def counting_step() -> None:
        sizes.append(len(env._queue))
        step()

    env.step = counting_step  # type: ignore[method-assign]
    sim.run()
    return statistics.fmean(sizes)


def bare_timeouts(processes: int, events: int, seed: int) -> dict[str, float]:
    """``processes`` SimPy processes that only yield exponential timeouts, ``events`` events in all."""
    env = simpy.Environment()
    per_process = max(1, events // processes)
    gaps = np.random.default_rng(seed).exponential(1.0, (processes, per_process)).tolist()

    def proc(mine: list[float]) -> Generator[simpy.Event, Any, None]:
        for gap in mine:
            yield env.timeout(gap)

    for row in gaps:
        env.process(proc(row))
    cpu, wall = time.process_time(), time.perf_counter()
    env.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"events": next(env._eid), "cpu_s": cpu, "wall_s": wall}


def side_by_side(scn: Scenario, repeat: int) -> dict[str, Any]:
    """Parts 1 and 2, interleaved: skeleton, pipesim, bare loop; ``repeat`` rounds; medians of the rates."""
    processes = max(1, round(live_processes(scn)))
    rounds = []
    for _ in range(repeat):
        skeleton, model = run_skeleton(scn), run_pipesim(scn)
        bare = bare_timeouts(processes, model["events"], scn.seed)
        no_trace, alone = run_pipesim(scn, without=("trace",)), run_pipesim(scn, without=("trace", "manager"))
        for part in (no_trace, alone):  # the same simulation, or the comparison means nothing
            if (part["turns_digest"], part["events"]) != (model["turns_digest"], model["events"]):
                raise AssertionError("pipesim without its trace or state manager simulated something else")
        rounds.append({"skeleton": skeleton, "pipesim": model, "bare_timeouts": bare,
                       "pipesim_no_trace": no_trace, "simulation_alone": alone})

    def median(part: str, num: str, den: str = "cpu_s") -> float:
        return statistics.median(r[part][num] / r[part][den] for r in rounds)

    figures = {
        "skeleton_turns_per_s": median("skeleton", "turns"),
        "pipesim_turns_per_s": median("pipesim", "turns"),
        "skeleton_events_per_turn": rounds[0]["skeleton"]["events"] / rounds[0]["skeleton"]["turns"],
        "pipesim_events_per_turn": rounds[0]["pipesim"]["events"] / rounds[0]["pipesim"]["turns"],
        "pipesim_events_per_s": median("pipesim", "events"),
        "bare_events_per_s": median("bare_timeouts", "events"),
        "bare_processes": processes,
    }
    # Ratios of two runs' rates and shares of pipesim's CPU: each round's own runs, then the median.
    def rate_ratio(part: str, base: str, num: str) -> float:
        return statistics.median((r[part][num] / r[part]["cpu_s"]) / (r[base][num] / r[base]["cpu_s"])
                                 for r in rounds)

    def share(part: str, minus: str | None = None) -> float:
        return statistics.median((r[part]["cpu_s"] - (r[minus]["cpu_s"] if minus else 0)) / r["pipesim"]["cpu_s"]
                                 for r in rounds)

    figures["turns_ratio"] = rate_ratio("pipesim", "skeleton", "turns")
    figures["trace_share"] = share("pipesim", "pipesim_no_trace")
    figures["manager_share"] = share("pipesim_no_trace", "simulation_alone")
    figures["simulation_share"] = share("simulation_alone")
    figures["simulation_alone_turns_per_s"] = median("simulation_alone", "turns")
    figures["simulation_alone_ratio"] = rate_ratio("simulation_alone", "skeleton", "turns")
    figures["events_ratio"] = rate_ratio("pipesim", "bare_timeouts", "events")
    return {"figures": figures, "rounds": rounds}


# 3. Sizes, each in a fresh process ----------------------------------------------------------------------
def _rss_bytes() -> int:
    """The resident set size of this process now (Linux), or 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    """The peak resident set size of this process since it started or since :func:`_reset_peak_rss`."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Start measuring the peak RSS afresh (Linux >= 4.0: ``/proc/self/clear_refs``); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(sessions: int) -> dict[str, Any]:
    """One size, in this (fresh) process, run the way the README tells users to run a big study: the trace
    streamed to a run folder as it goes (``simulate(out=DIR)``, ``pipesim run --out DIR``), then the
    DataFrames built from it. The run's peak RSS and the DataFrames' peak (what the process holds while
    building them, the run's leftovers included) are measured apart."""
    scn = pipesim.load_scenario(SCENARIO).override({"sessions.arrivals.count": sessions})
    with tempfile.TemporaryDirectory(prefix="bench_model_") as folder:
        rss_before = _rss_bytes()
        cpu, wall = time.process_time(), time.perf_counter()
        sim = Simulation(scn, trace_out=folder)
        try:
            sim.run()
        except PipesimError as exc:  # the memory budget refuses the size: say so, plainly
            return {"sessions": sessions, "refused": str(exc)}
        sim.trace.close()  # what simulate(out=...) does: the rest of the trace written
        run_cpu, run_wall = time.process_time() - cpu, time.perf_counter() - wall
        run_peak = _peak_rss_bytes()
        sim_s, simpy_events, seed, trace = sim.env.now, next(sim.env._eid), sim.seed, sim.trace
        del sim  # as simulate() lets the model go: the Results keep only the trace
        res = pipesim.Results(scn, seed, trace)
        separate = _reset_peak_rss()
        cpu, wall = time.process_time(), time.perf_counter()
        turns, events, _, _ = res.turns, res.events, res.sessions, res.services
        frames_cpu, frames_wall = time.process_time() - cpu, time.perf_counter() - wall
        frames_peak = _peak_rss_bytes()
        n_turns, n_events = len(turns), len(events)
        del turns, events
        _reset_peak_rss()
        cpu = time.process_time()
        res.save(folder)  # what `pipesim run --out` does last: the messages, a row group at a time
        save_cpu, save_peak = time.process_time() - cpu, _peak_rss_bytes()
    return {
        "sessions": sessions, "turns": n_turns, "trace_events": n_events, "simpy_events": simpy_events,
        "sim_s": sim_s, "run_cpu_s": run_cpu, "run_wall_s": run_wall,
        "frames_cpu_s": frames_cpu, "frames_wall_s": frames_wall,
        "turns_per_s": n_turns / run_cpu, "us_per_turn": 1e6 * run_cpu / n_turns,
        "sim_s_per_wall_s": sim_s / run_wall, "frames_over_run": frames_cpu / run_cpu,
        # What the run took over the imported libraries, per event of its trace (streamed: not held).
        "bytes_per_trace_event": (run_peak - rss_before) / max(1, n_events),
        "run_peak_rss_mib": run_peak / 2**20,
        "frames_peak_rss_mib": frames_peak / 2**20 if separate else None,
        "save_cpu_s": save_cpu, "save_over_run": save_cpu / run_cpu,
        "save_peak_rss_mib": save_peak / 2**20 if separate else None,
        "peak_rss_mib": max(run_peak, frames_peak, save_peak) / 2**20,
    }


def sizes(counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"sessions": n, "failed": proc.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(proc.stdout))
    return rows


# Output -------------------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> str:
    lines = [f"bench_model: {SCENARIO}, {result['side_by_side_sessions']} sessions, "
             f"{result['repeat']} interleaved rounds (medians, per CPU second)"]
    f = result["side_by_side"]["figures"]
    lines += [
        f"  {'':24}{'turns/s':>10}{'events/turn':>13}{'events/s':>12}",
        f"  {'bare-SimPy skeleton':24}{f['skeleton_turns_per_s']:10,.0f}{f['skeleton_events_per_turn']:13.1f}",
        f"  {'pipesim':24}{f['pipesim_turns_per_s']:10,.0f}{f['pipesim_events_per_turn']:13.1f}"
        f"{f['pipesim_events_per_s']:12,.0f}",
        f"  {'bare env.timeout loop':24}{'':10}{'':13}{f['bare_events_per_s']:12,.0f}"
        f"   ({f['bare_processes']} live processes)",
        f"  ratio turns/s pipesim/skeleton {f['turns_ratio']:.2f} (target >= 0.5); "
        f"events/s pipesim/bare {f['events_ratio']:.0%} (target >= 30%)",
        f"  where pipesim's CPU goes: trace {f['trace_share']:.0%}, state manager {f['manager_share']:.0%}, "
        f"the simulation itself {f['simulation_share']:.0%}",
        f"  (the simulation alone, same events and turns: {f['simulation_alone_turns_per_s']:,.0f} turns/s, "
        f"{f['simulation_alone_ratio']:.2f} of the skeleton)",
        "",
        f"  {'sessions':>9}{'turns':>9}{'turns/s':>9}{'us/turn':>9}{'sim s/s':>9}{'run MiB':>9}"
        f"{'frames MiB':>11}{'B/event':>9}{'frames/run':>11}{'save MiB':>9}{'save/run':>9}",
    ]
    for row in result["sizes"]:
        if "turns" not in row:
            why = row.get("refused") or row.get("failed")
            lines.append(f"  {row['sessions']:9,}  not run: {why}")
            continue
        lines.append(f"  {row['sessions']:9,}{row['turns']:9,}{row['turns_per_s']:9,.0f}{row['us_per_turn']:9.0f}"
                     f"{row['sim_s_per_wall_s']:9,.0f}{row['run_peak_rss_mib']:9,.0f}"
                     f"{row['frames_peak_rss_mib'] or row['peak_rss_mib']:11,.0f}{row['bytes_per_trace_event']:9,.0f}"
                     f"{row['frames_over_run']:11.2f}{row['save_peak_rss_mib'] or row['peak_rss_mib']:9,.0f}"
                     f"{row['save_over_run']:9.2f}")
    if result.get("per_turn_flatness") is not None:
        lines.append(f"  per-turn cost, largest / smallest size: {result['per_turn_flatness']:.2f} "
                     "(target within 20%: 0.8 to 1.2)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="session counts of baseline, each run in a fresh process")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the side-by-side parts")
    parser.add_argument("--sessions", type=int, default=1_000, help="sessions of the side-by-side parts")
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, one round; asserts no speed")
    parser.add_argument("--json", type=Path, default=Path("out/bench/model.json"), help="where to write the JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    if args.quick:
        args.sizes, args.repeat, args.sessions = [20, 40], 1, 20
    scn = pipesim.load_scenario(SCENARIO).override({"sessions.arrivals.count": args.sessions})
    result: dict[str, Any] = {
        "benchmark": "model", "scenario": SCENARIO, "side_by_side_sessions": args.sessions, "repeat": args.repeat,
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform(),
                    "simpy": simpy.__version__, "numpy": np.__version__},
        "side_by_side": side_by_side(scn, args.repeat),
        "sizes": sizes(args.sizes),
    }
    ran = [r for r in result["sizes"] if "us_per_turn" in r]
    result["per_turn_flatness"] = ran[-1]["us_per_turn"] / ran[0]["us_per_turn"] if len(ran) > 1 else None
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"  wrote {args.json}")


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
