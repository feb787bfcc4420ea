"""Every reader of JSON from a file or a socket goes through ``pipesim._jsonsafe``: what would crash Python's
decoder (an integer of thousands of digits, arrays thousands deep) is one error naming the limit, not a
``ValueError`` or ``RecursionError`` traceback. The live servers' own readers are fuzzed in
``tests/test_live_fuzz.py`` and ``tests/test_rtvi_fuzz.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipesim.calibration import read_measurements
from pipesim.errors import CalibrationError, LiveError, TraceError
from pipesim.live.load import server_stats
from pipesim.results import Results, simulate
from pipesim.trace import Trace

HUGE_INT = "9" * 5000
DEEP = "[" * 5000 + "]" * 5000
HOSTILE = {"a 5,000-digit integer": (f'{{"chat_history": {{"items": [{HUGE_INT}]}}}}', "an integer of 5000 digits"),
           "5,000-deep arrays": (DEEP, "nested deeper than 32 levels")}
cases = pytest.mark.parametrize(("text", "named"), HOSTILE.values(), ids=HOSTILE.keys())


@cases
def test_a_calibration_report_names_the_line(tmp_path: Path, text: str, named: str) -> None:
    report = tmp_path / "report.jsonl"
    report.write_text('{"chat_history": {"items": []}}\n' + text + "\n")
    with pytest.raises(CalibrationError, match=f"report.jsonl:2: invalid JSON: {named}"):
        read_measurements(report)


@cases
def test_a_run_folders_parquet_header_is_refused_as_not_a_run_folder(tmp_path: Path, text: str, named: str) -> None:
    table = pa.table({"t": [0.0]}).replace_schema_metadata({b"pipesim": text.encode()})
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(TraceError, match=f"not a pipesim run folder \\({named}"):
        Trace.from_parquet(tmp_path)


@cases
def test_a_run_folders_scenario_json_names_the_limit(tmp_path: Path, text: str, named: str) -> None:
    simulate({"name": "tiny", "seed": 1, "sessions": {"arrivals": {"kind": "at_once", "count": 1}, "turns": 1}},
             progress=False, out=tmp_path)
    (tmp_path / "scenario.json").write_text(text)
    with pytest.raises(json.JSONDecodeError, match=named):
        Results.load(tmp_path)


@pytest.fixture
def stats_server() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP server whose ``/stats`` answers the body last put in the list."""
    bodies = [b"{}"]

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(bodies[-1])))
            self.end_headers()
            self.wfile.write(bodies[-1])

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{httpd.server_address[1]}/ws", bodies
    finally:
        httpd.shutdown()
        httpd.server_close()


@cases
def test_the_load_tests_stats_reader_says_not_a_pipesim_serve(
        stats_server: tuple[str, list[bytes]], text: str, named: str) -> None:
    url, bodies = stats_server
    bodies.append(text.encode())
    with pytest.raises(LiveError, match="/stats: not JSON: not a pipesim serve"):
        server_stats(url, timeout=5)
