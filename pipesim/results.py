"""The offline run: :func:`simulate` a scenario and get :class:`Results` full of DataFrames.

>>> import pipesim
>>> res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 5}}}, seed=1, progress=False)
>>> sorted(res.turns["outcome"].unique())[:1]
['barge_in']
"""

from __future__ import annotations

import html
import importlib.util
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipesim import _jsonsafe, analysis
from pipesim.errors import TooLargeError
from pipesim.model import Simulation
from pipesim.model.budget import check_budget, default_memory_limit, estimate_run
from pipesim.scenario import Scenario, as_scenario, validate_scenario
from pipesim.trace import (
    MESSAGE_BATCH_ROWS,
    MESSAGE_COLUMNS,
    MESSAGE_GROUP_ROWS,
    MESSAGE_SCHEMA,
    Trace,
    read_batches,
    write_row_groups,
)

#: Memory a message takes in :attr:`Results.messages`: its JSON text (~300 bytes) and its row of the other
#: columns; 529 bytes of RSS a message measured (``baseline``, 5,000 sessions), counted generously.
MESSAGE_FRAME_BYTES = 600


class Results:
    """Everything one run produced. DataFrames are built on first use, then cached.

    * ``turns``: one row per user turn (see :data:`pipesim.trace.TURN_COLUMNS`).
    * ``sessions``: one row per session.
    * ``services``: busy workers and queue length of each service after every change.
    * ``requests``: one row per request sent to a service (every attempt): when it was queued, taken by a
      worker and over, and what became of it (see :data:`pipesim.trace.REQUEST_COLUMNS`).
    * ``messages``: the wire messages a dashboard would have received, in order.
    * ``events``: every transition and model event.
    * ``kafka_windows``: every Kafka stall or outage in force during the run.
    """

    def __init__(self, scenario: Scenario, seed: int, trace: Trace, folder: str | Path | None = None) -> None:
        self.scenario, self.seed, self.trace = scenario, seed, trace
        #: A run folder the derived tables (``sessions``, ``messages``) may be read from instead of rebuilt.
        self.folder = None if folder is None else Path(folder)

    def _saved_path(self, name: str) -> Path | None:
        path = None if self.folder is None else self.folder / f"{name}.parquet"
        return path if path is not None and path.exists() else None

    @cached_property
    def turns(self) -> pd.DataFrame:
        return self.trace.turns_frame()

    @cached_property
    def events(self) -> pd.DataFrame:
        return self.trace.events_frame()

    @cached_property
    def sessions(self) -> pd.DataFrame:
        path = self._saved_path("sessions")
        if path is not None:
            return pd.read_parquet(path)
        # From the session_created / session_stopped rows alone: no need for the whole events frame.
        return analysis.sessions_frame(self.trace.lifecycle_frame(), self.turns)

    @cached_property
    def services(self) -> pd.DataFrame:
        return self.trace.services_frame()

    @cached_property
    def requests(self) -> pd.DataFrame:
        return self.trace.requests_frame()

    @cached_property
    def messages(self) -> pd.DataFrame:
        """The wire messages, all of them (see :meth:`iter_messages` for a run too large for that)."""
        path = self._saved_path("messages")
        self._check_messages_fit(self.trace.n_messages() if path is None else pq.read_metadata(path).num_rows)
        return self.trace.messages_frame() if path is None else pd.read_parquet(path)

    def iter_messages(self, rows: int = MESSAGE_BATCH_ROWS) -> Iterator[pd.DataFrame]:
        """The wire messages of :attr:`messages`, in order, a part at a time: frames of the messages of about
        ``rows`` events each (read from the run folder's ``messages.parquet`` when there is one). Memory
        stays that of one part, whatever the size of the run.

        >>> import pipesim
        >>> res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 3}}}, progress=False)
        >>> sum(len(part) for part in res.iter_messages(rows=20)) == len(res.messages)
        True
        """
        for table in self._message_tables(rows):
            yield table.to_pandas()

    def _message_tables(self, rows: int) -> Iterator[pa.Table]:
        path = self._saved_path("messages")
        if path is not None:
            for batch in read_batches(path, rows):
                yield pa.Table.from_batches([batch])
        else:
            yield from self.trace.message_tables(rows)

    @staticmethod
    def _check_messages_fit(n: int) -> None:
        """Refuse (:class:`~pipesim.errors.TooLargeError`) to build a frame of ``n`` messages larger than the
        memory available: a run of 100,000 sessions has ~10 million messages, ~6 GB."""
        need, limit = n * MESSAGE_FRAME_BYTES, default_memory_limit()
        if need > limit:
            raise TooLargeError(
                f"Results.messages: {n:,} wire messages would take about {need / 1e6:,.0f} MB as one DataFrame, "
                f"more than the {limit / 1e6:,.0f} MB of memory available; read them a part at a time with "
                f"Results.iter_messages(), or save the run (Results.save, pipesim run --out) and read "
                f"messages.parquet with filters")

    @cached_property
    def kafka_windows(self) -> pd.DataFrame:
        return self.trace.kafka_windows_frame()

    def summary(self) -> pd.DataFrame:
        """count and p50/p95/p99/max (ms) of every stage and of voice-to-voice latency."""
        return analysis.summary_table(self.turns)

    def counts(self) -> dict[str, int]:
        """Turns by outcome, and Kafka timeouts."""
        return analysis.counts(self.turns)

    def failures(self) -> pd.Series:
        """Failed turns by cause (``stt: low audio quality, re-prompting the user``, ...), most first.

        >>> res.failures()   # doctest: +SKIP
        """
        return analysis.failures(self.turns)

    # Analysis and figures (see pipesim.analysis and pipesim.plots) ---------------------------------
    @property
    def end_time(self) -> float:
        """The last moment of the run that left a trace (seconds)."""
        return self.trace.end_time()

    def percentiles(self, columns: Sequence[str] = analysis.FIGURES, by: str | Sequence[str] | None = None,
                    ) -> pd.DataFrame:
        """count, mean, p50, p90, p95, p99, max (seconds) of turn columns, overall or per group.

        >>> res.percentiles(["e2e_latency"], by="outcome")   # doctest: +SKIP
        """
        return analysis.percentiles(self.turns, columns, by)

    def breakdown(self) -> pd.DataFrame:
        """Per turn: the parts of voice-to-voice latency, which add up to it (:func:`analysis.breakdown`)."""
        return analysis.breakdown(self.turns)

    def percentile_breakdown(self, quantiles: Sequence[float] = (0.5, 0.95, 0.99)) -> pd.DataFrame:
        """Mean composition of the turns around p50/p95/p99 (:func:`analysis.percentile_breakdown`)."""
        return analysis.percentile_breakdown(self.turns, quantiles)

    def utilisation(self, window: float = 10.0) -> pd.DataFrame:
        """Time-weighted utilisation and queue length per service and window (:func:`analysis.utilisation`)."""
        return analysis.utilisation(self.services, window, end=self.end_time)

    def services_summary(self) -> pd.DataFrame:
        """Per service over the run (to its last service sample: stale work may go on after the last event):
        utilisation, time-average queue, requests and the share of worker time spent on stale ones
        (:func:`analysis.services_summary`)."""
        return analysis.services_summary(self.services, self.requests)

    def state_durations(self, column: str = "state") -> pd.DataFrame:
        """Seconds each session spent in each state (:func:`analysis.state_durations`)."""
        return analysis.state_durations(self.events, column, end=self.end_time)

    def incidents(self) -> pd.DataFrame:
        """Every Kafka timeout, failed turn and barge-in (:func:`analysis.incidents`)."""
        return analysis.incidents(self.events)

    def incident_summary(self) -> dict[str, int]:
        """Kafka timeouts, retries, failed turns (and how many ran out of Kafka retries), barge-ins
        (:func:`analysis.incident_summary`)."""
        return analysis.incident_summary(self.events)

    def compare(self, other: Results, labels: Sequence[str] | None = None) -> pd.DataFrame:
        """This run and ``other`` side by side: p50/p95/p99 (ms) and the delta (:func:`analysis.compare`)."""
        return analysis.compare(self, other, labels)

    @property
    def plot(self) -> Any:
        """The run's figures: ``res.plot.cdf()``, ``res.plot.breakdown()``, ``res.plot.timeline(sid)``...
        (see :class:`pipesim.plots.ResultsPlots`)."""
        from pipesim.plots import ResultsPlots

        return ResultsPlots(self)

    def timeline(self, session_id: str | None = None, **kw: Any) -> Any:
        """The timeline figure of one session (:func:`pipesim.plots.session_timeline`)."""
        from pipesim.plots import session_timeline

        return session_timeline(self, session_id, **kw)

    # Files -----------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, csv: bool = False, jsonl: bool = False) -> list[Path]:
        """Write every table as Parquet (``events``, ``turns``, ``sessions``, ``services``, ``requests``,
        ``messages``, ``kafka_windows``; the trace's header in ``events.parquet``), the scenario
        (``scenario.json``), and if asked CSV copies of the tables besides events and the trace as JSON Lines
        (``trace.jsonl``).
        :meth:`load` reads it back exactly.

        Returns the paths written. The same run writes the same bytes.
        """
        out = Path(out_dir)
        written = self.trace.to_parquet(out)
        self.sessions.to_parquet(out / "sessions.parquet", index=False)
        written += [out / "sessions.parquet", self._save_messages(out / "messages.parquet")]
        if csv:
            for name in ("turns", "sessions", "services", "requests", "kafka_windows"):
                getattr(self, name).to_csv(out / f"{name}.csv", index=False)
                written.append(out / f"{name}.csv")
            with open(out / "messages.csv", "w", encoding="utf-8", newline="") as fh:
                fh.write(",".join(MESSAGE_COLUMNS) + "\n")
                for part in self.iter_messages():
                    part.to_csv(fh, index=False, header=False)
            written.append(out / "messages.csv")
        if jsonl:
            self.trace.to_jsonl(out / "trace.jsonl")
            written.append(out / "trace.jsonl")
        scenario_path = out / "scenario.json"
        scenario_path.write_text(self.scenario.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return [*written, scenario_path]

    def _save_messages(self, path: Path) -> Path:
        """``messages.parquet``, built and written a part at a time in row groups of ``MESSAGE_GROUP_ROWS``
        messages: saving a run holds one row group of messages, never all of them."""
        if self.folder is not None and path.resolve() == (self.folder / path.name).resolve() and path.exists():
            return path  # read from there: already saved
        tmp = path.with_name(path.name + ".part")
        # The JSON texts are all different: no dictionary for them (its hash table would double the memory).
        with pq.ParquetWriter(tmp, MESSAGE_SCHEMA, use_dictionary=["session_id", "type"]) as writer:
            held, held_rows = [MESSAGE_SCHEMA.empty_table()], 0
            for table in self._message_tables(MESSAGE_BATCH_ROWS):
                held.append(table)
                held_rows += table.num_rows
                if held_rows >= MESSAGE_GROUP_ROWS:
                    rest = write_row_groups(writer, pa.concat_tables(held), MESSAGE_GROUP_ROWS, final=False)
                    held, held_rows = [rest], rest.num_rows
            write_row_groups(writer, pa.concat_tables(held), MESSAGE_GROUP_ROWS, final=True)
        tmp.replace(path)
        pa.default_memory_pool().release_unused()
        return path

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Load results from a run folder (:meth:`save`, ``pipesim run --out``, ``simulate(out=...)``:
        Parquet, or a ``trace.jsonl`` alone) or a ``trace.jsonl`` file."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if path.is_dir() and (path / "events.parquet").exists():
            trace = Trace.from_parquet(path)
        else:
            trace = Trace.from_jsonl(path / "trace.jsonl" if path.is_dir() else path)
        scenario_file = folder / "scenario.json"
        scenario = (validate_scenario(_jsonsafe.loads(scenario_file.read_text()), source=str(scenario_file))
                    if scenario_file.exists() else Scenario(name=str(trace.header.get("scenario", "unknown"))))
        return cls(scenario, int(trace.header.get("seed", scenario.seed)), trace,
                   folder=path if path.is_dir() and (path / "events.parquet").exists() else None)

    # Display ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        c = self.counts()
        return (f"<Results {self.scenario.name!r} seed={self.seed}: {c['turns']} turns, "
                f"{c['failed']} failed, {c['kafka_timeouts']} Kafka timeouts>")

    def _repr_html_(self) -> str:
        c = self.counts()
        facts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in c.items())
        causes = "".join(f"<br>failed, {html.escape(cause)}: {n}" for cause, n in self.failures().items())
        return (f"<b>Results of {self.scenario.name}</b> (seed {self.seed}, "
                f"{len(self.sessions)} sessions)<br>{facts}{causes}{self.summary().to_html()}")


def progress_bar_class() -> type:
    """tqdm's bar for here: the notebook widget in Jupyter with ipywidgets, else the text bar.

    ``tqdm.auto`` makes the same choice, but warns ``TqdmWarning: IProgress not found`` into the notebook
    when ipywidgets is missing; the text bar needs no apology.

    >>> progress_bar_class().__name__ in ("tqdm", "tqdm_notebook")
    True
    """
    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


def _progress_bar(sim: Simulation, enabled: bool | None) -> Any:
    if enabled is False:
        return None
    # disable=None: a bar on a terminal or in Jupyter, nothing when output is not a TTY (CI logs).
    bar = progress_bar_class()(total=sim.expected_sessions, desc=f"simulating {sim.scenario.name}",
                               unit="session", disable=None if enabled is None else not enabled, leave=False)
    sim.on_session_end = lambda _sid: bar.update(1)
    return bar


#: Memory a run may take held (bytes, as :func:`pipesim.model.budget.estimate_run` estimates it: its trace
#: and its model) before :func:`simulate` streams the trace to a temporary folder. Held, 100,000 sessions
#: of ``baseline`` peak near 3.8 GB with their DataFrames; streamed, near 1.7 GB (docs/performance.md).
HOLD_LIMIT = 2**30


def simulate(scenario: Scenario | str | Path | dict[str, Any], seed: int | None = None,
             until: float | None = None, progress: bool | None = None, memory_limit: int | None = None,
             out: str | Path | None = None) -> Results:
    """Run a scenario offline, as fast as possible, and return its :class:`Results`.

    ``scenario`` is a :class:`~pipesim.scenario.Scenario`, a dict, a file path or a bundled scenario's
    name (``"baseline"``). ``seed`` overrides the scenario's seed; the same scenario and seed give the
    same results, byte for byte. ``progress``: None shows a bar only on a terminal or in Jupyter.

    ``out``: a folder to stream the trace to as the run goes (``events.parquet``, ``services.parquet`` and
    ``requests.parquet`` in row groups of a million rows, then ``turns.parquet``, ``kafka_windows.parquet``
    and ``scenario.json``),
    so that a run too big to hold in memory still completes; the Results read them back when asked. A run
    whose trace would take more than :data:`HOLD_LIMIT` bytes of memory (about 40,000 sessions of
    ``baseline``) streams to a temporary folder of its own when no ``out`` is given (deleted with its
    trace): the same frames, and no size of run needs much more than a gigabyte or two.

    A scenario whose run would need more than ``memory_limit`` bytes (default: 80% of the memory
    available now, see :mod:`pipesim.model.budget`) is refused with a
    :class:`~pipesim.scenario.ScenarioError` before it starts.

    >>> res = simulate("baseline", seed=7)  # doctest: +SKIP
    >>> res.summary()                       # doctest: +SKIP
    """
    scn = as_scenario(scenario)
    spill = out is None and estimate_run(scn, until).bytes > HOLD_LIMIT
    # Refused before any folder is made (the run checks again, the same way): a refusal leaves nothing behind.
    check_budget(scn, until if until is not None else scn.duration_s, memory_limit,
                 streaming=out is not None or spill)
    if spill:
        out = tempfile.mkdtemp(prefix="pipesim-run-")
    sim = Simulation(scn, seed=seed, trace_out=out)
    if spill:
        weakref.finalize(sim.trace, shutil.rmtree, out, ignore_errors=True)
    bar = _progress_bar(sim, progress)
    try:
        sim.run(until=until, memory_limit=memory_limit)
    finally:
        if bar is not None:
            bar.close()
        sim.trace.close()
    if out is not None and not spill:
        (Path(out) / "scenario.json").write_text(scn.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return Results(scn, sim.seed, sim.trace)
