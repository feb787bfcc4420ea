"""The trace's tables: their columns, and the Arrow types they are kept in.

>>> EVENT_SCHEMA.names == list(EVENT_COLUMNS)
True
"""

from __future__ import annotations

import pyarrow as pa

EVENT_COLUMNS = ("t", "session_id", "turn_id", "seq", "event", "service", "status", "state", "stt", "llm",
                 "tts", "buffer_size", "audio_quality", "error", "value")

#: Columns of the ``turns`` table. Times ending in nothing are seconds; absolute times are seconds since
#: the start of the run. For every turn that reached the bot's first audio::
#:
#:     e2e_latency = end_of_utterance_delay + stt_stage + llm_stage + tts_stage
#:     <x>_stage   = <x>_kafka + <x>_queue + <x>_service + <x>_retry
#:
#: ``llm_stage`` ends when the first phrase reaches TTS; what the LLM generated after that overlapped
#: with TTS (``streaming_overlap``). ``ttft`` and ``ttfb`` are measured from each service's request
#: (``ttfb`` is ``tts_stage`` under the name LiveKit and Pipecat use); ``transcription_delay`` from the end of
#: speech to the final transcript (``end_of_utterance_delay + stt_stage``).
#: ``<x>_queue`` is the time every attempt of the turn waited for a worker; ``<x>_retry`` the rest of the
#: time lost to attempts that timed out. ``<x>_busy`` is the worker time the turn's requests held (the LLM's
#: whole generation; stale attempts served after a timeout included), so that summed over the turns it is
#: the busy time of the pool.
TURN_COLUMNS = (
    "session_id", "turn_id", "outcome", "error",
    "speech_start", "speech_end", "utterance_ended", "first_audio", "turn_end",
    "utterance_duration", "audio_quality", "audio_bytes", "end_of_utterance_delay",
    "stt_kafka", "stt_queue", "stt_service", "stt_retry", "stt_timeouts", "stt_stage", "stt_busy",
    "transcription_delay",
    "llm_kafka", "llm_queue", "llm_service", "llm_retry", "llm_timeouts", "llm_stage", "llm_busy",
    "ttft", "llm_tokens", "llm_duration", "streaming_overlap",
    "tts_kafka", "tts_queue", "tts_service", "tts_retry", "tts_timeouts", "tts_stage", "tts_busy",
    "ttfb", "tts_audio_duration", "e2e_latency",
)
#: Columns of ``Results.messages``: ``message`` is the JSON text sent, ``t`` the time of its transition.
MESSAGE_SCHEMA = pa.schema([("t", pa.float64()), ("session_id", pa.string()), ("seq", pa.int64()),
                            ("type", pa.string()), ("message", pa.string())])
MESSAGE_COLUMNS = tuple(MESSAGE_SCHEMA.names)
SERVICE_COLUMNS = ("t", "service", "busy", "queued", "capacity")
#: Columns of the ``requests`` table: one row per attempt (``attempt`` counts from 1), times in seconds since
#: the start of the run. ``enqueued``: delivered by Kafka into the service's consumer queue (NaN: never);
#: ``started``: a worker took it to serve it (NaN: never); ``finished``: it left the service, its worker freed
#: or unserved (NaN: not by the end of the run, or it never reached the queue). ``outcome`` is one of
#: :data:`REQUEST_OUTCOMES`.
REQUEST_COLUMNS = ("session_id", "turn_id", "service", "attempt", "enqueued", "started", "finished", "outcome")
#: What became of a request:
#:
#: * ``served``: a worker took it before its deadline and its first response was due back in time (the answer
#:   the turn waited for; the worker is freed at once if the turn ends before the job does);
#: * ``timed_out``: a worker took it before its deadline, but its first response was due back too late: the
#:   orchestrator gave up on it (and retried, or failed the turn); the worker finished the job all the same;
#: * ``stale``: the orchestrator gave up on it while it was still in Kafka or in the queue, and a worker served
#:   it later all the same (``kafka.stale_requests: served``: the consumer cannot tell);
#: * ``dropped``: the same, but the consumer skipped it when it read it (``kafka.stale_requests: dropped``): it
#:   left the queue then, with no worker time (``started`` NaN);
#: * ``cancelled``: its turn ended (a barge-in, pause, stop or failure) before a worker took it: withdrawn from
#:   the queue, or never delivered (still in Kafka: ``enqueued`` NaN);
#: * ``waiting``: still in Kafka or in the queue when the run stopped (a run cut by ``until``).
REQUEST_OUTCOMES = ("served", "timed_out", "stale", "dropped", "cancelled", "waiting")
KAFKA_WINDOW_COLUMNS = ("start", "end", "topic", "cause")
_CODE = pa.dictionary(pa.int32(), pa.string())
_SMALL_CODE = pa.dictionary(pa.int16(), pa.string())  # a column of few values: events, states, services, errors
#: Arrow types of the columnar tables: strings are codes into a per-chunk dictionary (categoricals in the
#: DataFrames); integers as narrow as their values allow (widened to int64 in the DataFrames).
EVENT_SCHEMA = pa.schema([("t", pa.float64()), ("session_id", _CODE), ("turn_id", pa.int32()), ("seq", pa.int32()),
                          *((c, _SMALL_CODE) for c in ("event", "service", "status", "state", "stt", "llm", "tts")),
                          ("buffer_size", pa.int64()), ("audio_quality", pa.float64()), ("error", _SMALL_CODE),
                          ("value", pa.float64())])
SERVICE_SCHEMA = pa.schema([("t", pa.float64()), ("service", _SMALL_CODE), ("busy", pa.int32()), ("queued", pa.int32()),
                            ("capacity", pa.int32())])
REQUEST_SCHEMA = pa.schema([("session_id", _CODE), ("turn_id", pa.int32()), ("service", _SMALL_CODE),
                            ("attempt", pa.int32()), ("enqueued", pa.float64()), ("started", pa.float64()),
                            ("finished", pa.float64()), ("outcome", _SMALL_CODE)])
#: What a state transition (an event with ``seq >= 0``) needs to be replayed as a wire message.
TRANSITION_COLUMNS = ("t", "session_id", "turn_id", "event", "status", "state", "stt", "llm", "tts",
                      "buffer_size")
