"""The state manager's core promises: clock- and I/O-free, observers, clear errors, no change on reject."""

import subprocess
import sys

import pytest

from pipesim.state import IllegalTransition, PipelineStateManager, UnknownSession


def test_state_package_imports_no_clock_or_io():
    code = ("import sys, pipesim.state; "
            "bad = [m for m in ('simpy', 'asyncio', 'websockets') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_illegal_transition_names_session_service_and_states():
    m = PipelineStateManager()
    m.create_session("abc", 0.0)
    m.start("abc", 0.0)
    m.speech_started("abc", 0.0)
    m.utterance_ended("abc", 1.0)
    with pytest.raises(IllegalTransition) as info:
        m.service_started("abc", "stt", 1.0)
    err = info.value
    assert (err.session_id, err.service, err.current, err.requested) == ("abc", "stt", "idle", "executing")
    assert "'abc'" in str(err) and "stt" in str(err) and "'idle'" in str(err) and "'executing'" in str(err)


def test_rejected_event_changes_nothing_and_emits_nothing():
    m = PipelineStateManager()
    seen = []
    m.subscribe(seen.append)
    m.create_session("a", 0.0)
    m.start("a", 0.0)
    before = m.snapshot("a", 0.0)
    with pytest.raises(IllegalTransition):
        m.service_requested("a", "llm", 0.5)
    assert m.snapshot("a", 0.0) == before
    assert len(seen) == 2


def test_unknown_session():
    with pytest.raises(UnknownSession, match="unknown session 'nope'"):
        PipelineStateManager().start("nope", 0.0)
