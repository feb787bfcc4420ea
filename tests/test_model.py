"""The model against what it must do (not against its own output)."""

import subprocess
import sys

import numpy as np
import pytest

import pipesim
from pipesim.scenario import Scenario
from pipesim.state import PipelineStateManager
from pipesim.trace import transitions

FAST = {"sessions": {"arrivals": {"kind": "at_once", "count": 40}}}


def scripted(*sessions, **sections) -> Scenario:
    """No background sessions, constant timings: each figure is known in advance."""
    data = {
        "sessions": {"arrivals": {"kind": "at_once", "count": 0}, "end_of_utterance_delay_s": 0.3,
                     "scripted": list(sessions)},
        "kafka": {"latency_s": 0.005},
        "services": {"stt": {"latency_s": 0.5}, "llm": {"ttft_s": 0.3, "per_token_s": 0.01, "tokens": 20},
                     "tts": {"ttfb_s": 0.2}},
        "audio": {"metadata_interval_s": 0.25},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return Scenario.model_validate(data)


def test_second_of_two_simultaneous_turns_waits_with_capacity_one():
    talk = [{"at": 0.0, "action": "start"}, {"at": 1.0, "speak": 1.0}]
    scn = scripted({"id": "a", "timeline": talk}, {"id": "b", "timeline": talk},
                   services={"stt": {"capacity": 1, "latency_s": 0.5},
                             "llm": {"ttft_s": 0.3, "per_token_s": 0.01, "tokens": 20}, "tts": {"ttfb_s": 0.2}})
    turns = pipesim.simulate(scn, progress=False).turns.sort_values("stt_queue")
    assert turns["stt_queue"].tolist() == pytest.approx([0.0, 0.5])
    assert turns["e2e_latency"].diff().iloc[1] == pytest.approx(0.5)


def test_end_to_end_latency_is_the_sum_of_known_stages():
    scn = scripted({"id": "a", "timeline": [{"at": 0.0, "action": "start"}, {"at": 1.0, "speak": 2.0}]})
    turn = pipesim.simulate(scn, progress=False).turns.iloc[0]
    # eou 0.3 + stt (5 ms + 0.5 + 5 ms) + llm (5 ms + 0.3 ttft + 4 tokens * 10 ms + 5 ms) + tts (5 + 200 + 5 ms)
    assert turn["e2e_latency"] == pytest.approx(0.3 + 0.51 + 0.35 + 0.21)
    assert turn["ttft"] == pytest.approx(0.31)
    assert turn["ttfb"] == pytest.approx(0.21)
    assert turn["outcome"] == "complete"


def test_scheduled_kafka_outage_times_out_only_in_its_window():
    # Capacity to spare, so that the burst delivered when the outage ends queues for no one: every timeout
    # is the outage's own. (With tight capacity the backlog times out too: see test_overload.py.)
    scn = pipesim.load_scenario("scenarios/kafka_timeouts.yaml").override({
        "kafka.stalls.rate_per_hour": 0, "sessions.arrivals.rate_per_s": 2.0, "services.stt.capacity": 400,
        "services.llm.capacity": 400, "services.tts.capacity": 400})
    res = pipesim.simulate(scn, progress=False)
    timeouts = res.events[res.events["event"] == "kafka_timeout"]["t"]
    assert len(timeouts) > 0
    start, end, timeout = 120.0, 135.0, scn.kafka.request_timeout_s
    assert timeouts.min() >= start and timeouts.max() <= end + timeout
    failed = res.turns[res.turns["outcome"] == "failed"]
    assert failed["error"].str.contains("Kafka timed out").any()


def test_barge_in_cancels_tts():
    res = pipesim.simulate("scenarios/barge_in.yaml", progress=False)
    ev = res.events
    trans = ev[ev["seq"] >= 0].reset_index(drop=True)
    barge = trans.index[trans["event"] == "barge_in"]
    assert len(barge) > 20
    for i in barge:
        before = trans.loc[:i - 1][trans.loc[:i - 1, "session_id"] == trans.loc[i, "session_id"]].iloc[-1]
        assert before["tts"] == "executing"
        assert trans.loc[i, ["state", "stt", "llm", "tts"]].tolist() == ["listening", "idle", "idle", "idle"]
    barged = res.turns[res.turns["outcome"] == "barge_in"]
    completed_tts = ev[(ev["event"] == "service_completed") & (ev["service"] == "tts")]
    assert not set(zip(barged.session_id, barged.turn_id, strict=True)) & set(
        zip(completed_tts.session_id, completed_tts.turn_id, strict=True))


@pytest.mark.parametrize("scenario", ["barge_in", "kafka_timeouts", "frontend_demo", "poor_audio"])
def test_every_session_state_sequence_is_legal(scenario):
    res = pipesim.simulate(scenario, progress=False, until=200)
    fresh = PipelineStateManager(max_retries=res.scenario.kafka.max_retries)
    calls = {
        "session_created": lambda tr: fresh.create_session(tr.session_id, tr.t),
        "session_started": lambda tr: fresh.start(tr.session_id, tr.t),
        "session_resumed": lambda tr: fresh.start(tr.session_id, tr.t),
        "session_paused": lambda tr: fresh.pause(tr.session_id, tr.t),
        "session_stopped": lambda tr: fresh.stop(tr.session_id, tr.t),
        "speech_started": lambda tr: fresh.speech_started(tr.session_id, tr.t),
        "audio": lambda tr: fresh.audio(tr.session_id, tr.t, tr.buffer_size, tr.audio_quality),
        "utterance_ended": lambda tr: fresh.utterance_ended(tr.session_id, tr.t),
        "barge_in": lambda tr: fresh.barge_in(tr.session_id, tr.t),
        "service_requested": lambda tr: fresh.service_requested(tr.session_id, tr.service, tr.t),
        "service_started": lambda tr: fresh.service_started(tr.session_id, tr.service, tr.t),
        "service_completed": lambda tr: fresh.service_completed(tr.session_id, tr.service, tr.t),
        "kafka_timeout": lambda tr: fresh.kafka_timeout(tr.session_id, tr.service, tr.t),
    }
    replayed, failed_by_timeout = 0, None
    for tr in transitions(res.trace):
        if tr.event == "turn_failed" and failed_by_timeout is not None:
            got, failed_by_timeout = failed_by_timeout, None  # already emitted by the last kafka_timeout
        elif tr.event == "turn_failed":
            got = fresh.service_failed(tr.session_id, tr.service, tr.t, tr.error.split(": ", 1)[1])
        else:
            got = calls[tr.event](tr)
            if got.event == "turn_failed":  # the timeout past the retry budget also fails the turn
                failed_by_timeout = got
                got = got._replace(seq=tr.seq, event=tr.event, state=tr.state, stt=tr.stt, llm=tr.llm,
                              tts=tr.tts, error=None)
        assert got == tr
        replayed += 1
    assert replayed > 100


def test_buffer_grows_with_audio_and_resets_at_hand_off():
    res = pipesim.simulate(FAST, progress=False)
    ev = res.events[res.events["seq"] >= 0]
    for _sid, rows in ev.groupby("session_id"):
        growing = None
        for row in rows.itertuples():
            if row.event == "speech_started":
                growing = 0 if row.buffer_size == 0 else row.buffer_size
            elif row.event == "audio":
                assert row.buffer_size >= growing
                growing = row.buffer_size
            elif row.event == "service_requested" and row.service == "stt":
                assert row.buffer_size == 0
    audio_end = ev[ev["event"] == "utterance_ended"][["session_id", "turn_id", "buffer_size"]]
    merged = audio_end.merge(res.turns, on=["session_id", "turn_id"])
    assert (merged["buffer_size"] == merged["audio_bytes"]).all()
    assert (merged["audio_bytes"] % res.scenario.audio.chunk_bytes == 0).all()


def test_same_scenario_and_seed_give_the_same_trace_byte_for_byte(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pipesim.simulate("kafka_timeouts", seed=3, progress=False).trace.to_jsonl(a)
    code = ("import pipesim,sys; pipesim.simulate('kafka_timeouts', seed=3, progress=False)"
            f".trace.to_jsonl({str(b)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.jsonl"
    pipesim.simulate("kafka_timeouts", seed=4, progress=False).trace.to_jsonl(c)
    assert a.read_bytes() != c.read_bytes()


def test_adding_a_session_does_not_change_the_draws_of_the_others():
    def utterances(count):
        res = pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": count}}}, seed=9,
                               progress=False)
        t = res.turns
        return t[t["session_id"] == "sim-00001"].sort_values("turn_id")["utterance_duration"].tolist()

    assert utterances(2) == utterances(30)


def test_pause_freezes_a_session_until_it_resumes():
    scn = scripted({"id": "a", "timeline": [{"at": 0.0, "action": "start"}, {"at": 1.0, "speak": 1.0},
                                            {"at": 2.5, "action": "pause"}, {"at": 5.0, "speak": 1.0},
                                            {"at": 8.0, "action": "start"}, {"at": 9.0, "speak": 1.0},
                                            {"at": 20.0, "action": "stop"}]})
    res = pipesim.simulate(scn, progress=False)
    ev = res.events[res.events["seq"] >= 0]
    during = ev[(ev["t"] > 2.5) & (ev["t"] < 8.0)]
    assert during.empty  # the speech at t=5 is ignored while paused
    assert res.turns["outcome"].tolist() == ["cancelled", "complete"]
    assert ev.iloc[-1]["status"] == "stopped"
    ignored = res.events[res.events["event"] == "script_step_ignored"]
    assert len(ignored) == 1 and "paused" in ignored["error"].iloc[0]


def test_poor_audio_slows_and_fails_stt():
    res = pipesim.simulate("poor_audio", progress=False)
    t = res.turns
    poor = t["audio_quality"] < res.scenario.quality.poor_threshold
    assert poor.sum() > 50 and (~poor).sum() > 50
    assert t.loc[poor, "stt_service"].median() > 1.5 * t.loc[~poor, "stt_service"].median()
    assert t.loc[poor, "error"].fillna("").str.contains("low audio quality").sum() > 10
    assert not t.loc[~poor, "error"].fillna("").str.contains("low audio quality").any()


def test_ramp_arrivals_follow_the_rate():
    res = pipesim.simulate("load_spike", progress=False)
    created = res.sessions["created"]
    steady = ((created >= 0) & (created < 100)).sum() / 100
    spike = ((created >= 125) & (created < 175)).sum() / 50
    assert 0.6 < steady < 1.5 and 4.5 < spike < 7.5


def test_empirical_latencies_from_csv(tmp_path):
    (tmp_path / "stt.csv").write_text("latency_s\n0.1\n0.2\n0.3\n")
    (tmp_path / "s.yaml").write_text(
        "sessions: {arrivals: {kind: at_once, count: 20}}\n"
        "services: {stt: {latency_s: {kind: empirical, csv: stt.csv, column: latency_s}}}\n")
    res = pipesim.simulate(tmp_path / "s.yaml", progress=False)
    good = res.turns[res.turns["audio_quality"] >= res.scenario.quality.poor_threshold]
    assert set(np.round(good["stt_service"].dropna(), 6)) <= {0.1, 0.2, 0.3}
