"""Write tests/data/livekit_report.jsonl: session reports written by LiveKit Agents' own classes.

Run once, in a throwaway virtual environment outside the repository (LiveKit Agents is too heavy for
pipesim's test dependencies)::

    python3.11 -m venv /tmp/lk-venv && /tmp/lk-venv/bin/pip install livekit-agents==1.8.9 numpy
    /tmp/lk-venv/bin/python scripts/make_livekit_report.py

The file is committed; the version that wrote it is in each report's ``sdk_version`` (1.8.9 for the
committed file). No network and no model: an ``AgentSession`` is built but not started, its chat history
filled with the messages a session would hold, each with the ``metrics`` LiveKit records on it
(``llm.chat_context.MetricsReport``), and ``voice.report.SessionReport.to_dict()`` writes the report as
``JobContext.make_session_report()`` does. One report per line: SESSIONS sessions of TURNS user turns.

How LiveKit times a user turn (``voice/audio_recognition.py``): STT streams while the user speaks; both
delays are measured from the end of the user's speech; the turn is decided only once the final
transcript is in and the endpointing delay has passed, so ``end_of_turn_delay >= transcription_delay``.
The generated latencies follow that, in seconds:

- ``transcription_delay``: lognormal, p50 STT_P50, p95 STT_P95 (end of speech to final transcript);
- ``end_of_turn_delay``: max(transcription_delay, endpointing delay) + the turn detector's inference, the
  endpointing delay the report's ``min_endpointing_delay`` (0.3 s) plus a lognormal wait, p50 120 ms,
  p95 500 ms, at most ``max_endpointing_delay`` (2.5 s); the inference lognormal, p50 20 ms, p95 40 ms;
- ``llm_node_ttft``: lognormal, p50 350 ms, p95 900 ms; ``tts_node_ttfb``: lognormal, p50 200 ms, p95 350 ms;
- each session opens with a greeting (``say()``): an assistant message with a TTS time and no LLM time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from livekit.agents import AgentSession
from livekit.agents.llm import ChatContext
from livekit.agents.voice.report import SessionReport

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "livekit_report.jsonl"
SESSIONS = 4
TURNS = 25
STT_P50, STT_P95 = 0.28, 0.6
START = 1_780_000_000.0  # a fixed clock, so the file is the same on every run


def lognormal(rng: np.random.Generator, p50: float, p95: float) -> float:
    return float(rng.lognormal(np.log(p50), np.log(p95 / p50) / 1.6448536269514722))


def report(session_index: int, rng: np.random.Generator) -> dict:
    session = AgentSession(vad=None)  # not started: only its options and chat history are used
    history: ChatContext = session.history
    opts = session.options.endpointing
    clock = START + 3600 * session_index
    greeting_ttfb = lognormal(rng, 0.2, 0.35)
    history.add_message(role="assistant", content="Hello! How can I help you today?",
                        id=f"item_s{session_index}_greeting", created_at=clock,
                        metrics={"tts_node_ttfb": greeting_ttfb})
    for turn in range(1, TURNS + 1):
        clock += 4.0 + 3.0 * rng.random()
        speech_start, speech_end = clock, clock + 1.0 + 2.0 * rng.random()
        transcription = lognormal(rng, STT_P50, STT_P95)
        endpointing = min(opts["min_delay"] + lognormal(rng, 0.12, 0.5), opts["max_delay"])
        end_of_turn = max(transcription, endpointing) + lognormal(rng, 0.02, 0.04)
        callback = lognormal(rng, 0.002, 0.01)
        history.add_message(role="user", content=f"user turn {turn}", id=f"item_s{session_index}_u{turn}",
                            created_at=speech_end + end_of_turn,
                            metrics={"started_speaking_at": speech_start, "stopped_speaking_at": speech_end,
                                     "transcription_delay": transcription, "end_of_turn_delay": end_of_turn,
                                     "on_user_turn_completed_delay": callback})
        ttft, ttfb = lognormal(rng, 0.35, 0.9), lognormal(rng, 0.2, 0.35)
        reply_start = speech_end + end_of_turn + callback + ttft + ttfb
        clock = reply_start + 2.0 + 4.0 * rng.random()
        history.add_message(role="assistant", content=f"agent reply {turn}", id=f"item_s{session_index}_a{turn}",
                            created_at=reply_start,
                            metrics={"started_speaking_at": reply_start, "stopped_speaking_at": clock,
                                     "llm_node_ttft": ttft, "tts_node_ttfb": ttfb,
                                     "e2e_latency": reply_start - speech_end})
    sr = SessionReport(job_id=f"AJ_pipesim{session_index}", room_id=f"RM_pipesim{session_index}",
                       room=f"pipesim-fixture-{session_index}", options=session.options, events=[],
                       chat_history=history.copy(), started_at=START + 3600 * session_index,
                       timestamp=clock + 1.0)
    sr.duration = sr.timestamp - START - 3600 * session_index
    return sr.to_dict()


def main() -> None:
    rng = np.random.default_rng(20261207)
    lines = [json.dumps(report(i, rng), sort_keys=True) for i in range(SESSIONS)]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({SESSIONS} sessions of {TURNS} turns, livekit-agents {json.loads(lines[0])['sdk_version']})")


if __name__ == "__main__":
    main()
