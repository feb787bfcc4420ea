"""Write pipesim/scenarios/measurements_example.csv, the measurements notebook 05 calibrates from.

Run once (``python scripts/make_measurements_example.py``); the file is committed. It stands in for
per-turn timings exported from a lightly loaded production system: 400 turns, one row each, seconds
rounded to the millisecond as logs print them. The distributions are deliberately unlike pipesim's
defaults, so that a calibrated run visibly differs from an uncalibrated one:

- ``end_of_utterance_delay``: gamma, mean 450 ms, cv 0.35 (a slower endpointer than the default 300 ms);
- ``stt_service``: lognormal, p50 180 ms, p95 420 ms;
- ``ttft``: gamma, mean 550 ms, cv 0.6 (a larger model than the default's 260 ms p50);
- ``ttfb``: two modes, 85% cached voices around 110 ms and 15% cold ones around 380 ms, which neither a
  lognormal nor a gamma fits: the fit keeps the samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "pipesim" / "scenarios" / "measurements_example.csv"
TURNS = 400


def main() -> None:
    rng = np.random.default_rng(20261125)
    shape = 1 / 0.35**2
    eou = rng.gamma(shape, 0.45 / shape, TURNS)
    stt = rng.lognormal(np.log(0.18), np.log(0.42 / 0.18) / 1.6449, TURNS)
    shape = 1 / 0.6**2
    ttft = rng.gamma(shape, 0.55 / shape, TURNS)
    cold = rng.random(TURNS) < 0.15
    ttfb = np.where(cold, rng.normal(0.38, 0.04, TURNS), rng.lognormal(np.log(0.11), 0.15, TURNS))
    frame = pd.DataFrame({
        "session_id": [f"call-{i // 5:03d}" for i in range(TURNS)],
        "turn_id": [i % 5 + 1 for i in range(TURNS)],
        "end_of_utterance_delay": eou, "stt_service": stt, "ttft": ttft, "ttfb": ttfb,
    })
    columns = ["end_of_utterance_delay", "stt_service", "ttft", "ttfb"]
    frame[columns] = frame[columns].clip(lower=0.001).round(3)
    frame.to_csv(OUT, index=False)
    print(f"wrote {OUT} ({TURNS} turns)")


if __name__ == "__main__":
    main()
