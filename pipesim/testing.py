"""pytest support for teams that test a frontend (or any client) against pipesim from Python.

Installed with pipesim (a ``pytest11`` entry point), so after ``pip install pipesim`` every test can ask
for the ``pipesim_server`` fixture: a live server on free ports (WebSocket and admin API, both on
127.0.0.1), started for the test and stopped after it::

    def test_dashboard_shows_llm_executing(pipesim_server, page):
        page.goto(pipesim_server.http_url)
        pipesim_server.admin.run_until("demo-1", {"services.llm": "executing"})   # the clock is now paused
        ...                                                                        # assert the DOM
        assert pipesim_server.admin.journal(type="conversation_control") == []

The fixture yields a :class:`PipesimServer`: ``.ws_url``, ``.http_url``, ``.admin_url`` and ``.admin``, an
:class:`AdminClient` (synchronous, standard library only) with one method per admin endpoint.

Which scenario: ``frontend_demo`` at speed 1 by default. Per test, with the marker
``@pytest.mark.pipesim(scenario="baseline", seed=7, speed=10, paused=True)`` (any keyword of
:class:`~pipesim.live.LiveServer` goes, ``options=ServerOptions(...)`` included, plus ``paused``: pause the
clock before the test starts, and ``tls=True``: ``wss://`` and ``https://`` with a certificate from a local CA,
whose file the fixture hands over as ``.ca_file``); for a
whole module or ``conftest.py``, override the ``pipesim_options`` fixture to return the same keywords.

:class:`AdminClient` also works on its own against ``pipesim serve`` (``AdminClient(url, token)``).

For capacity, :func:`assert_slos_met` runs :func:`pipesim.check` and fails the test with its figures::

    def test_latency_budget():
        assert_slos_met("scenarios/baseline.yaml", ["e2e_latency_p95 <= 1.5s", "failed_share <= 0.05"], until=300)

>>> AdminClient("http://127.0.0.1:8002/__admin").url
'http://127.0.0.1:8002/__admin'
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pipesim.errors import PipesimError

try:
    import pytest
except ImportError:  # the client needs the standard library alone; pytest, which loads the fixtures, has pytest
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pipesim.gate import CheckResult

__all__ = ["AdminClient", "AdminError", "PipesimServer", "assert_slos_met"]  # and, with pytest, the fixtures


class AdminError(PipesimError):
    """The admin API answered with an error: ``status``, ``code`` and the body's ``message``."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.body = status, code, body


class AdminClient:
    """A small synchronous client of the admin API (``http://127.0.0.1:PORT/__admin``).

    Every method returns the decoded JSON answer; an error answer raises :class:`AdminError`.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, cafile: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        #: The CA to trust for an ``https://`` admin API (``pipesim serve --tls-self-signed`` prints its path).
        self.cafile = cafile

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """``method`` ``path`` (under the base URL) with a JSON ``body``; the decoded JSON answer."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            context = ssl.create_default_context(cafile=self.cafile) if self.url.startswith("https:") else None
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                answer = json.loads(payload)
                error = answer["error"]
            except (ValueError, KeyError, TypeError):
                raise AdminError(exc.code, "http", payload[:200].decode("utf-8", "replace"), {}) from None
            raise AdminError(exc.code, error.get("code", "?"), error.get("message", ""), answer) from None

    # Endpoints, one each
    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def sessions(self) -> list[dict[str, Any]]:
        return self.request("GET", "/sessions")["sessions"]

    def session(self, session_id: str) -> dict[str, Any]:
        return self.request("GET", f"/sessions/{_quote(session_id)}")

    def create_session(self, session_id: str | None = None, *, turns: int | None = None,
                       audio_quality: float | None = None, start: bool = True) -> dict[str, Any]:
        body = {"session_id": session_id, "turns": turns, "audio_quality": audio_quality, "start": start}
        return self.request("POST", "/sessions", {k: v for k, v in body.items() if v is not None})

    def control(self, session_id: str, action: str) -> dict[str, Any]:
        """``start``, ``pause`` or ``stop`` a session, as ``conversation_control`` would."""
        return self.request("POST", f"/sessions/{_quote(session_id)}/{action}")

    def clock(self) -> dict[str, Any]:
        return self.request("GET", "/clock")

    def pause(self) -> dict[str, Any]:
        return self.request("POST", "/clock/pause")

    def resume(self) -> dict[str, Any]:
        return self.request("POST", "/clock/resume")

    def speed(self, speed: float) -> dict[str, Any]:
        return self.request("POST", "/clock/speed", {"speed": speed})

    def step(self, count: int = 1, limit: int = 1000) -> dict[str, Any]:
        """The next ``count`` transitions, then paused; the answer lists the first ``limit`` of them."""
        return self.request("POST", "/clock/step", {"count": count, "limit": limit})

    def advance(self, seconds: float, limit: int = 1000) -> dict[str, Any]:
        """Exactly ``seconds`` simulated seconds, then paused; the answer lists the first ``limit`` transitions
        (``transitions_total`` counts them all)."""
        return self.request("POST", "/clock/advance", {"seconds": seconds, "limit": limit})

    def run_until(self, session_id: str, until: dict[str, str], timeout_s: float = 60.0,
                  wall_timeout_s: float = 10.0) -> dict[str, Any]:
        """Run as fast as possible until ``session_id`` matches ``until`` (e.g. ``{"services.llm":
        "executing"}``); the clock is left paused there. Raises :class:`AdminError` ``timeout``."""
        return self.request("POST", "/clock/run-until", {"session_id": session_id, "until": until,
                                                           "timeout_s": timeout_s, "wall_timeout_s": wall_timeout_s})

    def fault(self, fault: str, *, service: str | None = None, duration_s: float | None = None,
              session_id: str | None = None) -> dict[str, Any]:
        body = {"fault": fault, "service": service, "duration_s": duration_s, "session_id": session_id}
        return self.request("POST", "/faults", {k: v for k, v in body.items() if v is not None})["applied"]

    def push(self, session_id: str, *messages: dict[str, Any], after_s: float = 0.0,
             allow_unknown: bool = False) -> int:
        """Send protocol messages to ``session_id``'s watchers, ``after_s`` simulated seconds from now.

        An id the model does not know is :class:`AdminError` 404, unless ``allow_unknown``."""
        items = [{"message": m, "after_s": after_s} for m in messages]
        query = "?allow_unknown=true" if allow_unknown else ""
        return self.request("POST", f"/sessions/{_quote(session_id)}/push{query}", {"messages": items})["scheduled"]

    def journal(self, *, session_id: str | None = None, type: str | None = None,  # noqa: A002 (the field's name)
                direction: str | None = None, since: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """The journal's entries matching every filter, oldest first: ``since`` (an entry id, e.g. from
        :meth:`journal_mark`) keeps those made after it, ``limit`` the newest ``limit`` of them."""
        query = {k: v for k, v in (("session_id", session_id), ("type", type), ("direction", direction),
                                   ("since", since), ("limit", limit)) if v is not None}
        return self.request("GET", "/journal" + (f"?{urlencode(query)}" if query else ""))["entries"]

    def journal_mark(self) -> int:
        """The id of the journal's newest entry: ``journal(since=mark)`` later lists only what came after."""
        return self.request("GET", "/journal?limit=0")["last_id"]

    def clear_journal(self) -> int:
        return self.request("DELETE", "/journal")["cleared"]

    def reset(self) -> dict[str, Any]:
        return self.request("POST", "/reset")


def _quote(part: str) -> str:
    return urllib.request.quote(part, safe="")


@dataclass
class PipesimServer:
    """What the ``pipesim_server`` fixture yields."""

    ws_url: str
    http_url: str
    admin_url: str
    admin: AdminClient
    #: The :class:`~pipesim.live.BackgroundServer` itself (``.server.sim`` is the model, touch it via ``.call``).
    background: Any
    #: With ``tls=True``: the CA file that signed the server's certificate (trust it in the client), else None.
    ca_file: str | None = None


if pytest is not None:
    __all__ += ["pipesim_options", "pipesim_server"]

    @pytest.fixture
    def pipesim_options() -> dict[str, Any]:
        """Keywords for the server of ``pipesim_server`` (override it in a conftest.py); a test's
        ``@pytest.mark.pipesim(...)`` keywords are laid over them."""
        return {}


    @pytest.fixture
    def pipesim_server(request: pytest.FixtureRequest, pipesim_options: dict[str, Any],
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipesimServer]:
        """A live pipesim server on free loopback ports for one test (see :mod:`pipesim.testing`)."""
        from pipesim.live import BackgroundServer, LiveServer
        from pipesim.live.tls import self_signed

        options: dict[str, Any] = {"scenario": "frontend_demo", **pipesim_options}
        for marker in reversed(list(request.node.iter_markers("pipesim"))):  # the closest marker wins
            options.update(marker.kwargs)
        paused = bool(options.pop("paused", False))
        scenario = options.pop("scenario")
        options.setdefault("admin_token", None)
        if options.get("tls") is True:  # one local CA for the session's tests (the same folder each time)
            options["tls"] = self_signed(tmp_path_factory.getbasetemp() / "pipesim-tls")
        live = LiveServer(scenario, port=0, admin_port=0, **options)
        tls = live.options.tls
        ca_file = str(tls.ca) if tls is not None and tls.ca is not None else None
        if paused:
            live.pacer.pause()  # before it starts: the test begins at t = 0 exactly
        background = BackgroundServer(live)
        try:
            assert live.admin_url is not None
            admin = AdminClient(live.admin_url, token=options["admin_token"], cafile=ca_file)
            yield PipesimServer(ws_url=live.url, http_url=live.http_url, admin_url=live.admin_url, admin=admin,
                                background=background, ca_file=ca_file)
        finally:
            background.stop()


    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line("markers", "pipesim(scenario=..., seed=..., speed=..., paused=..., tls=..., ...): "
                                           "options of the pipesim_server fixture's server")


def assert_slos_met(scenario: Any, slos: Iterable[str] = (), **options: Any) -> CheckResult:
    """Fail the test unless every SLO is met (:func:`pipesim.check` with ``options``, e.g. ``until=``,
    ``max_replications=``); the failure message is check's table: each SLO, its mean, interval, runs and
    verdict, and how many runs collapsed. Returns the :class:`~pipesim.gate.CheckResult`.

    >>> result = assert_slos_met({"sessions": {"arrivals": {"kind": "at_once", "count": 20}}},
    ...                          ["e2e_latency_p95 <= 10s"], until=60)
    >>> result.verdict
    'met'
    """
    from pipesim.gate import check

    result = check(scenario, slos, **options)
    if not result.passed:
        raise AssertionError(f"SLOs not met ({result.verdict}):\n{result}")
    return result
