"""What the model's speed-ups promise besides speed: thinned audio reports change no latency figure, an
utterance whose quality overflows exp stays quiet, the run's garbage-collector setting is put back, and the
state manager records the same with one observer as with several. (That every bundled scenario's results stay the same,
frame by frame, is tests/test_trace.py's reference test.)"""

import gc
import warnings

import pandas as pd
import pytest

import pipesim
from pipesim.model import Simulation
from pipesim.model.simulation import RUN_GC_THRESHOLD


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


def test_one_observer_records_what_several_do():
    # With one observer (offline: the trace) the state manager hands each transition straight to it; with two,
    # through _deliver. Both runs must record the same transitions (audio reports included) and the same trace.
    scenario = pipesim.load_scenario("baseline").override({"sessions.arrivals.count": 20})
    alone, seen_alone = Simulation(scenario), []
    record = alone.manager._observers[0]

    def record_and_keep(tr):  # still one observer: the direct path
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
