"""Run every benchmark in this folder, one after the other: each prints its table and writes its JSON to
``out/bench/``. Arguments are passed on to each (``--quick``: the CI smoke of every one)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
for script in sorted(here.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=True)
