"""End to end: the dashboard page (``pipesim/live/static/index.html``) in a real headless Chromium, against
the live server running in this process.

A person's session with the page: open it, start a session by id, watch its pipeline state and its
STT/LLM/TTS lanes move, pause it (nothing moves), resume it (it moves again), stop it (it is shown as
ended and can be removed), see the server's error when asking for something illegal, and see the page
reconnect by itself when the server drops the connection. Against a replay, whose controls are all refused,
every control is disabled.

Uses Debian's Chromium at ``/usr/bin/chromium`` (``scripts/install-browser.sh``) through Playwright; never
``playwright install``. Skipped, with the reason, when that browser is not installed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, chromium_trusting, talking_scenario

SPEED = 5.0  # simulated seconds per wall second
TIMEOUT_MS = 20_000  # generous: a slow CI machine must not make this flaky

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: run `make browser` (scripts/install-browser.sh, as root) to install "
                "Debian's chromium for the dashboard's end-to-end test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) is not installed")
expect = sync_api.expect

pytestmark = pytest.mark.timeout(180)

#: The page's lane colours (CSS variables --idle, --waiting, --executing, --complete).
LANE_COLOURS = {"idle": "rgb(154, 165, 177)", "waiting": "rgb(240, 162, 2)", "executing": "rgb(47, 111, 222)",
                "complete": "rgb(46, 158, 91)"}

#: No background sessions; sessions started from the page talk quickly and keep talking.
SCENARIO = talking_scenario(name="dashboard_e2e", seed=5,
                            sessions={"first_speech_delay_s": 0.2, "utterance_s": 1.0, "think_time_s": 0.3})


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from pipesim.live import serve_in_background

    bg = serve_in_background(SCENARIO, host="127.0.0.1", port=0, speed=SPEED)
    try:
        yield bg
    finally:
        bg.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _problems_of(pg: Any) -> list[str]:
    """The page's JavaScript and console errors, collected as they come (the page's default timeout set)."""
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
          if msg.type == "error" else None)
    pg.set_default_timeout(TIMEOUT_MS)
    return problems


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    """The dashboard, connected; fails the test on any JavaScript error or console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    problems = _problems_of(pg)
    pg.goto(f"http://127.0.0.1:{server.port}/")
    # Colours are checked as computed: no easing in between.
    pg.add_style_tag(content="* { transition: none !important; }")
    expect(pg.locator("#connection")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    yield pg
    context.close()
    assert not problems, "\n".join(problems)


def _field(pg: Any, session_id: str, name: str) -> Any:
    return pg.locator(f'[data-session="{session_id}"] [data-field="{name}"]')


def _action(pg: Any, session_id: str, name: str) -> Any:
    return pg.locator(f'[data-session="{session_id}"] [data-action="{name}"]')


def _start_from_page(pg: Any, session_id: str) -> Any:
    pg.fill("#new-session-id", session_id)
    pg.click("#new-session-start")
    card = pg.locator(f'[data-session="{session_id}"]')
    expect(card).to_be_visible()
    expect(_field(pg, session_id, "status")).to_have_text("active")
    return card


def _card_state(pg: Any, session_id: str) -> dict[str, str]:
    """What a person reads on one session's card: every field's text and each lane's colour, read at once."""
    return pg.evaluate("""(sid) => {
        const card = [...document.querySelectorAll('[data-session]')].find((el) => el.dataset.session === sid);
        const out = {};
        for (const el of card.querySelectorAll('[data-field]')) out[el.dataset.field] = el.textContent;
        for (const el of card.querySelectorAll('[data-lane]')) {
            out[`${el.dataset.lane}_colour`] = getComputedStyle(el).backgroundColor;
        }
        return out;
    }""", session_id)


def _watch(pg: Any, session_id: str, seconds: float, until: Callable[[list[dict[str, str]]], bool]) -> list:
    """Sample the card every 50 ms until ``until(samples)`` holds or ``seconds`` pass; the samples."""
    samples: list[dict[str, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(_card_state(pg, session_id))
        if until(samples):
            break
        pg.wait_for_timeout(50)
    return samples


def test_start_pause_resume_stop_a_session_from_the_page(page: Any, tmp_path: Path) -> None:
    pg = page
    assert pg.title().startswith("pipesim")
    expect(pg.locator("#no-sessions")).to_be_visible()

    # Start: the card appears and the pipeline moves through its states.
    _start_from_page(pg, "e2e-1")
    expect(pg.locator("#no-sessions")).to_be_hidden()
    samples = _watch(pg, "e2e-1", 20, lambda s: (
        {"listening", "processing"} <= {x["state"] for x in s}
        and any("executing" in (x["stt"], x["llm"], x["tts"]) for x in s)
        and any(x["buffer"].endswith(("B", "KB")) and x["buffer"] != "0 B" for x in s)))
    seen_states = {x["state"] for x in samples}
    assert {"listening", "processing"} <= seen_states, f"pipeline states seen: {seen_states}"
    lanes = {(x["stt"], x["llm"], x["tts"]) for x in samples}
    assert any("executing" in lane for lane in lanes), f"no service ever executing: {lanes}"
    assert {v for lane in lanes for v in lane} <= {"idle", "waiting", "executing", "complete"}
    assert any(x["buffer"] not in ("–", "0 B") for x in samples), "the audio buffer never grew"
    assert all(x["quality"] == "–" or x["quality"].endswith("%") for x in samples)
    expect(_field(pg, "e2e-1", "turn")).not_to_have_text("–")
    # Every lane, in every sample, had the colour of its state: idle grey, waiting amber, executing blue,
    # complete green.
    for x in samples:
        for name in ("stt", "llm", "tts"):
            assert x[f"{name}_colour"] == LANE_COLOURS[x[name]], (name, x)

    # A second session runs independently of the first.
    _start_from_page(pg, "e2e-2")
    expect(pg.locator("#sessions [data-session]")).to_have_count(2)
    pg.screenshot(path=str(tmp_path / "dashboard-running.png"), full_page=True)

    # Pause: status paused, and nothing about the session changes any more.
    _action(pg, "e2e-1", "pause").click()
    expect(_field(pg, "e2e-1", "status")).to_have_text("paused")
    expect(_action(pg, "e2e-1", "pause")).to_be_disabled()
    expect(_action(pg, "e2e-1", "start")).to_be_enabled()
    pg.wait_for_timeout(300)
    frozen = _card_state(pg, "e2e-1")
    other_before = _field(pg, "e2e-2", "seq").text_content()
    pg.wait_for_timeout(2500)  # 12.5 simulated seconds: several turns' worth of updates for an active session
    assert _card_state(pg, "e2e-1") == frozen
    assert frozen["state"] in ("listening", "processing", "complete")
    assert _field(pg, "e2e-2", "seq").text_content() != other_before, "the other session must keep running"

    # Start again: it resumes.
    _action(pg, "e2e-1", "start").click()
    expect(_field(pg, "e2e-1", "status")).to_have_text("active")
    resumed = _watch(pg, "e2e-1", 20, lambda s: int(s[-1]["seq"]) >= int(frozen["seq"]) + 3)
    assert int(resumed[-1]["seq"]) >= int(frozen["seq"]) + 3, "no updates after resuming"

    # Stop: shown as ended (greyed), no more controls, can be removed.
    _action(pg, "e2e-1", "stop").click()
    card = pg.locator('[data-session="e2e-1"]')
    expect(card).to_have_attribute("data-status", "stopped")
    expect(_field(pg, "e2e-1", "status")).to_have_text("stopped")
    expect(_field(pg, "e2e-1", "ended")).to_be_visible()
    for name in ("start", "pause", "stop"):
        expect(_action(pg, "e2e-1", name)).to_be_hidden()
    expect(_action(pg, "e2e-1", "remove")).to_be_visible()
    assert card.evaluate("(el) => getComputedStyle(el).filter").startswith("grayscale")
    expect(_field(pg, "e2e-2", "status")).to_have_text("active")

    # The server refuses to restart a stopped session: its error is shown on the page.
    pg.fill("#new-session-id", "e2e-1")
    pg.click("#new-session-start")
    error = pg.locator('#errors .error-item[data-error-session="e2e-1"]')
    expect(error).to_be_visible()
    assert error.get_attribute("data-code") == "illegal_control"
    expect(error.locator(".message")).to_contain_text("e2e-1")
    pg.screenshot(path=str(tmp_path / "dashboard-ended.png"), full_page=True)

    _action(pg, "e2e-1", "remove").click()
    expect(card).to_have_count(0)
    expect(pg.locator("#sessions [data-session]")).to_have_count(1)
    _action(pg, "e2e-2", "stop").click()
    expect(pg.locator('[data-session="e2e-2"]')).to_have_attribute("data-status", "stopped")
    pg.click("#clear-ended")
    expect(pg.locator("#sessions [data-session]")).to_have_count(0)


def test_page_reconnects_and_picks_up_its_sessions(page: Any, server: Any) -> None:
    from websockets.sync.client import connect

    pg = page
    _start_from_page(pg, "e2e-reconnect")
    connection = pg.locator("#connection")
    expect(connection).to_have_attribute("data-connects", "1")
    # The server drops every connection that controls this session: the page's own.
    with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        ws.send(json.dumps({"type": "fault_injection", "fault": "disconnect", "session_id": "e2e-reconnect"}))
        expect(connection).to_have_attribute("data-connects", "2", timeout=TIMEOUT_MS)
    expect(connection).to_have_attribute("data-state", "open")
    # The snapshot on reconnect and the updates after it keep the card current.
    seq = int(_field(pg, "e2e-reconnect", "seq").text_content())
    after = _watch(pg, "e2e-reconnect", 20, lambda s: int(s[-1]["seq"]) >= seq + 3)
    assert int(after[-1]["seq"]) >= seq + 3, "no updates after reconnecting"
    assert pg.locator('[data-session="e2e-reconnect"][data-stale]').count() == 0
    _action(pg, "e2e-reconnect", "stop").click()
    expect(_field(pg, "e2e-reconnect", "status")).to_have_text("stopped")


def test_page_shows_when_the_server_clock_is_paused_or_not_real_time(page: Any, server: Any) -> None:
    """A person watching by hand must see why nothing moves: the clock was paused (admin API, replay)."""
    badge = page.locator("#clock")
    expect(badge).to_have_text(f"clock ×{SPEED:g}")  # the fixture's server runs at SPEED, not real time
    pacer = server.server.pacer
    server.call(pacer.pause)
    try:
        expect(badge).to_have_text("clock paused")
        expect(badge).to_have_attribute("data-paused", "true")
        expect(badge).to_be_visible()
    finally:
        server.call(pacer.resume)
    expect(badge).to_have_text(f"clock ×{SPEED:g}")
    server.call(lambda: pacer.set_speed(1.0))
    try:
        expect(badge).to_be_hidden()  # real time: nothing to say
    finally:
        server.call(lambda: pacer.set_speed(SPEED))


def test_page_passes_the_token_from_its_own_url_to_a_server_that_requires_one(browser: Any) -> None:
    from pipesim.live import serve_in_background

    token = "e2e-Token-7"
    with serve_in_background(SCENARIO, host="127.0.0.1", port=0, speed=SPEED, token=token) as bg:
        context = browser.new_context()
        try:
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            pg.goto(f"http://127.0.0.1:{bg.port}/")  # no token: the handshake is refused, the page says so
            expect(pg.locator("#connection")).to_have_attribute("data-state", "closed")
            pg.goto(f"http://127.0.0.1:{bg.port}/?token={token}")
            connection = pg.locator("#connection")
            expect(connection).to_have_attribute("data-state", "open")
            assert token not in (connection.text_content() or ""), "the page must not show the token"
            _start_from_page(pg, "e2e-token")
            expect(_field(pg, "e2e-token", "status")).to_have_text("active")
        finally:
            context.close()


def test_the_new_session_placeholder_is_shown_whole(page: Any) -> None:
    text_px, room_px = page.locator("#new-session-id").evaluate("""(el) => {
        const style = getComputedStyle(el);
        const ctx = document.createElement("canvas").getContext("2d");
        ctx.font = style.font;
        return [ctx.measureText(el.placeholder).width,
                el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)];
    }""")
    assert text_px <= room_px, f"the placeholder needs {text_px:.0f} px, the field shows {room_px:.0f}"
    expect(page.locator("body")).to_have_attribute("data-kind", "live")  # the server said so: controls on
    expect(page.locator("#new-session-start")).to_be_enabled()


def test_a_replay_disables_every_control(browser: Any, tmp_path: Path) -> None:
    """A replay refuses every control (``unsupported``): the page offers none, saying why."""
    import pipesim
    from pipesim.live import replay_in_background

    run = tmp_path / "run"
    pipesim.simulate({"name": "e2e_replay", "sessions": {"arrivals": {"kind": "at_once", "count": 2}, "turns": 3}},
                     seed=1, progress=False, out=run)
    with replay_in_background(str(run), host="127.0.0.1", port=0, speed=1.0, loop=True) as bg:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            pg.goto(f"http://127.0.0.1:{bg.port}/")
            expect(pg.locator("#connection")).to_have_attribute("data-state", "open")
            cards = pg.locator("#sessions [data-session]")
            expect(cards).to_have_count(2)
            for form_control in ("#new-session-id", "#new-session-start"):
                expect(pg.locator(form_control)).to_be_disabled()
            for session_id in cards.evaluate_all("(els) => els.map((el) => el.dataset.session)"):
                for name in ("start", "pause", "stop"):
                    button = _action(pg, session_id, name)
                    if button.is_visible():  # a session already ended shows Remove instead
                        expect(button).to_be_disabled()
                        expect(button).to_have_attribute("title", re.compile("replays"))
            expect(pg.locator("body")).to_have_attribute("data-kind", "replay")
            expect(pg.locator("#clock")).to_have_text("replay: controls off")  # said, not only greyed out
        finally:
            context.close()


def test_the_dashboard_over_https_and_wss_with_the_ca_trusted(browser: Any, tls_files: Any) -> None:
    """Served over TLS, the page is ``https://`` and talks to ``wss://.../ws`` (its ``Origin`` is ``https://``,
    which the access check lets in): a session started from it runs. Chromium trusts the certificate by a pin
    of its key; the module's Chromium, without the pin, refuses the page (certificate errors are not ignored)."""
    from pipesim.live import serve_in_background

    with serve_in_background(SCENARIO, port=0, speed=SPEED, tls=tls_files) as bg:
        assert bg.http_url.startswith("https://127.0.0.1:")
        untrusting = browser.new_context()
        try:
            with pytest.raises(sync_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                untrusting.new_page().goto(bg.http_url)
        finally:
            untrusting.close()
        chromium = browser.browser_type.launch(executable_path=str(CHROMIUM),
                                               args=[*CHROMIUM_ARGS, *chromium_trusting(tls_files)])
        try:
            pg = chromium.new_page()
            problems = _problems_of(pg)
            pg.goto(bg.http_url)
            expect(pg.locator("#connection")).to_have_attribute("data-state", "open")
            assert pg.evaluate("() => location.protocol") == "https:"
            _start_from_page(pg, "tls-1")
            expect(_field(pg, "tls-1", "turn")).not_to_have_text("–")
            assert bg.call(lambda: bg.server.sim.manager.status("tls-1")) == "active"
            assert not problems, "\n".join(problems)
        finally:
            chromium.close()
