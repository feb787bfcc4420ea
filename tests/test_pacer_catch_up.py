"""``Pacer.catch_up`` is bounded: a control or a handshake never steps more than ``batch`` events, so a
server that has fallen behind (starved of CPU) still answers while the pacer loop works off the backlog.
When it keeps up (fewer than ``batch`` events due), catch-up is what it always was: every due event
stepped, the clock moved to the wall clock's time.
"""

from __future__ import annotations

import asyncio
import time

import simpy
from conftest import run, talking_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from pipesim.live import LiveClient, LiveServer
from pipesim.live.pacer import Pacer


class FixedClock(Pacer):
    """A pacer whose wall clock says it is simulated time ``t``."""

    t = 0.0

    def now(self) -> float:
        return self.t


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.integers(0, 1000), max_size=300), target=st.integers(0, 1000), batch=st.integers(1, 120))
def test_catch_up_steps_the_due_events_in_order_at_most_a_batch(times: list[int], target: int, batch: int) -> None:
    env = simpy.Environment()
    stepped: list[float] = []
    for t in times:
        env.timeout(t / 8).callbacks.append(lambda e: stepped.append(e.env.now))
    pacer = FixedClock(env, batch=batch)
    pacer.t = target / 8  # eighths: exact in binary, so the clock can be compared with ==
    now = pacer.catch_up()
    due = sorted(t / 8 for t in times if t <= target)
    assert stepped == due[:batch]  # in time order, never more than a batch
    if len(due) <= batch:  # keeping up: as before, every due event and the clock at the wall's time
        assert now == env.now == target / 8
    else:  # behind: the control lands at the model's time, after the last event stepped
        assert now == env.now == due[batch - 1]
        assert env.peek() == due[batch]


def test_a_server_that_fell_behind_still_answers_controls_and_handshakes() -> None:
    """A model made slow (1 ms per transition) at a speed it cannot keep up with: the pacer falls further
    and further behind. A new connection and its ``start`` are answered within a bound, and the event loop
    never stalls for long; before, each handshake's snapshot and each control stepped the whole backlog
    (seconds of it) in one go, and the start was not answered within 5 s."""
    # Sessions that keep talking: with a few turns each, they could all end before the backlog reached 2 s,
    # leaving the model nothing to be behind on (this test failed that way in a full-suite run).
    quiet = talking_scenario()

    async def main() -> tuple[float, float, float]:
        async with LiveServer(quiet, port=0, speed=20, forget_after=None) as server:
            server.sim.manager.subscribe(lambda tr: time.sleep(0.001))  # the artificially slow model
            server.pacer.batch = 20
            stalls = [0.0]

            async def heartbeat() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    before = loop.time()
                    await asyncio.sleep(0.005)
                    stalls[0] = max(stalls[0], loop.time() - before - 0.005)

            beat = asyncio.ensure_future(heartbeat())
            async with LiveClient(server.url, [f"s{i}" for i in range(40)]) as starter:
                for i in range(40):
                    await starter.control("start", f"s{i}")
                pacer = server.pacer
                async with asyncio.timeout(30):
                    while pacer.behind() < 2.0:
                        await asyncio.sleep(0.05)
                stalls[0] = 0.0
                backlog = server._stats()["clock"]["behind_s"]  # what /stats tells load tests
                asked = time.monotonic()
                async with LiveClient(server.url, "late") as late:
                    await late.control("start", "late")
                    await late.expect(lambda m: m["type"] == "session_created", timeout=5)
                answered = time.monotonic() - asked
                beat.cancel()
                return backlog, answered, stalls[0]

    backlog, answered, stall = run(main())
    assert backlog >= 2.0
    # A handshake and a control take a dozen turns of the event loop, each one behind a pacer batch
    # (20 events, 20 ms here: 0.25 s); before, they took the backlog twice over, and it grew meanwhile (more
    # than 5 s). 2.5 s between the two: a full parallel test run on two cores took 1.5 s once.
    assert answered < 2.5, f"a start took {answered:.2f} s to answer with the pacer {backlog:.1f} s behind"
    assert stall < 0.3, f"the event loop stalled {stall:.2f} s with the pacer {backlog:.1f} s behind"


def test_catch_up_inside_an_event_being_stepped_steps_nothing_and_returns_that_events_time() -> None:
    """What an event's callback applies "now" (a stub's delayed answer: a control through the model) happens at
    that event's time: a catch-up from inside the step must not step the later events first (it did: the
    control landed after them, and their own callbacks ran before the rest of this event's)."""
    env = simpy.Environment()
    order: list[tuple[str, float]] = []
    pacer = FixedClock(env)
    pacer.t = 3.0  # the wall clock says 3 s: both events are due

    def apply_now(event: simpy.Event) -> None:
        order.append(("applied at", pacer.catch_up()))

    env.timeout(1.0).callbacks.append(apply_now)
    env.timeout(2.0).callbacks.append(lambda e: order.append(("later event", e.env.now)))
    pacer.catch_up()
    assert order == [("applied at", 1.0), ("later event", 2.0)]
    assert env.now == 3.0
