"""Every benchmark's ``--quick`` mode runs to the end (CI keeps them working; no speed is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK = ["bench_live.py"]  # each asserts its own sanity in --quick mode (bench_live: messages flowed, none lost)


@pytest.mark.parametrize("script", QUICK)
def test_benchmark_quick_mode_runs(script: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "bench").is_dir()
