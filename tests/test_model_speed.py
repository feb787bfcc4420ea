"""What the model's speed-ups promise besides speed: every bundled scenario's results are the ones the code
gave before them, thinned audio reports change no latency figure, an utterance whose quality overflows exp
stays quiet, and the run's garbage-collector setting is put back."""

import gc
import json
import warnings

import pandas as pd
import pytest
from model_digests import DIGESTS, FRAMES, SCENARIOS, digests, frame_digest

import pipesim
from pipesim.model import Simulation
from pipesim.model.simulation import RUN_GC_THRESHOLD

_STORED = json.loads(DIGESTS.read_text(encoding="utf-8"))


def test_the_digests_cover_every_bundled_scenario():
    assert sorted(_STORED) == SCENARIOS


def test_a_digest_sees_a_changed_bit_and_a_changed_order_but_not_a_changed_storage():
    frame = pd.DataFrame({"t": [0.5, 1.0, 1.5], "event": pd.Categorical(["audio", "speech_ended", "audio"]),
                          "n": pd.array([1, None, 3], dtype="Int64")})
    d = frame_digest(frame)
    nudged = frame.assign(t=[0.5, 1.0, 1.5000000000000002])
    assert frame_digest(nudged)["ordered"] != d["ordered"] and frame_digest(nudged)["unordered"] != d["unordered"]
    swapped = frame.iloc[[1, 0, 2]]
    assert frame_digest(swapped)["ordered"] != d["ordered"]
    assert frame_digest(swapped)["unordered"] == d["unordered"]  # the same set of rows
    stored_otherwise = frame.astype({"event": object, "n": "float64"})
    assert frame_digest(stored_otherwise) == d


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_bundled_scenario_gives_the_same_frames_bit_for_bit(name):
    # Same draws in the same order: every value of every row, and the rows' order, as before the speed work
    # (tests/model_digests.py wrote the stored digests from that code).
    now = digests(name, _STORED[name])
    for frame in FRAMES:
        assert now[frame] == _STORED[name][frame], f"{name}: the {frame} frame changed"


def _run(overrides):
    sim = Simulation(pipesim.load_scenario("baseline").override({"sessions.arrivals.count": 30, **overrides}))
    sim.run()
    return sim.trace.turns_frame(), sim.trace.events_frame()


@pytest.mark.parametrize("interval", [None, 1.0])
def test_thinned_audio_reports_change_no_turn_figure(interval):
    turns, events = _run({})
    thinned_turns, thinned_events = _run({"audio.metadata_interval_s": interval})
    pd.testing.assert_frame_equal(thinned_turns, turns)
    audio = (events["event"] == "audio").sum()
    thinned_audio = (thinned_events["event"] == "audio").sum()
    assert thinned_audio < audio
    if interval is None:  # one report per utterance: its last, with the whole buffer
        assert thinned_audio == (events["event"] == "utterance_ended").sum()
    others = events[events["event"] != "audio"].drop(columns="seq").reset_index(drop=True)
    thinned_others = thinned_events[thinned_events["event"] != "audio"].drop(columns="seq").reset_index(drop=True)
    pd.testing.assert_frame_equal(thinned_others, others)


def test_a_chunk_far_below_the_midpoint_has_quality_zero_without_a_warning():
    # -(snr - midpoint) / scale is about 1,000 here: exp overflows, so the quality is exactly 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        turns, events = _run({"quality.snr_mean_db": 10.0, "quality.snr_user_sd_db": 0.0,
                               "quality.snr_chunk_sd_db": 0.0, "quality.scale_db": 0.01})
    assert (turns["audio_quality"] == 0.0).all()
    assert (events.loc[events["event"] == "audio", "audio_quality"] == 0.0).all()


def test_run_puts_the_garbage_collector_setting_back_even_when_it_fails():
    before = gc.get_threshold()
    seen = []

    def observer(tr):
        seen.append(gc.get_threshold())
        if len(seen) == 50:
            raise RuntimeError("observer failed")

    sim = Simulation(pipesim.load_scenario("baseline").override({"sessions.arrivals.count": 5}))
    sim.manager.subscribe(observer)
    with pytest.raises(RuntimeError, match="observer failed"):
        sim.run()
    assert seen[-1] == RUN_GC_THRESHOLD != before
    assert gc.get_threshold() == before



def test_an_offline_run_lets_ended_sessions_go_and_keeps_every_result():
    # Memory follows the sessions in flight: 100,000 sessions must not hold 100,000 sets of random streams.
    scenario = pipesim.load_scenario("baseline").override({"sessions.arrivals.count": 60})
    sim = Simulation(scenario, seed=3)
    sim.run()
    assert sim.sessions == {}
    assert sim.trace.turns_frame()["session_id"].nunique() == 60


def test_the_audio_fast_path_records_what_the_general_one_does():
    # With one observer (offline: the trace) PipelineStateManager.audio builds its transition inline; with two,
    # every transition goes through _emit. Both runs must record the same transitions and the same trace.
    scenario = pipesim.load_scenario("baseline").override({"sessions.arrivals.count": 20})
    alone, seen_alone = Simulation(scenario), []
    record = alone.manager._observers[0]

    def record_and_keep(tr):  # still one observer: the fast path
        record(tr)
        seen_alone.append(tr)

    alone.manager._observers = (record_and_keep,)
    alone.run()
    watched, seen_watched = Simulation(scenario), []
    watched.manager.subscribe(seen_watched.append)  # a second observer: the general path
    watched.run()
    assert sum(tr.event == "audio" for tr in seen_alone) > 100
    assert list(map(repr, seen_watched)) == list(map(repr, seen_alone))
    pd.testing.assert_frame_equal(watched.trace.events_frame(), alone.trace.events_frame())
