"""Who may open ``/ws``: the Origin allowlist, the Host check and the optional token.

A browser lets any web page open a WebSocket to ``ws://127.0.0.1:8001/ws``; only the ``Origin`` header
says which page it is. So, at the handshake (see :meth:`Access.refusal`):

* **Origin** -- no ``Origin`` header (a program, not a browser page) is accepted. A page is accepted when
  its origin is ``http(s)://`` ``localhost``, a loopback address (``127.0.0.1``, ``[::1]``, ...) on any
  port, the server's own origin (the dashboard it serves, whatever name reached it), or one of
  ``allow_origins`` (``"*"`` accepts every origin, ``"null"`` the opaque origin of sandboxed pages and
  files). Everything else, ``null`` included, is refused.
* **Host** -- the ``Host`` header must name a loopback name or address, the address the server is bound
  to, or one of ``allow_hosts`` (``"*"``: any). This defeats DNS rebinding, where a hostile page's own
  name is made to resolve to 127.0.0.1: its requests then carry its own name as Host.
* **Token** -- with ``token`` set, the handshake must carry it as ``Authorization: Bearer TOKEN`` or as
  the ``token`` query parameter (which is how a browser page passes it). It is compared in constant time
  and never logged or echoed.

A refused handshake gets HTTP 403 with a one-line reason.

>>> access = Access(bound_host="127.0.0.1")
>>> access.refusal({"Host": "127.0.0.1:8001", "Origin": "http://localhost:5173"}, {})
>>> access.refusal({"Host": "127.0.0.1:8001", "Origin": "http://evil.example"}, {})
"Origin 'http://evil.example' is not allowed (see --allow-origin)"
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True if ``host`` (a name or an address, IPv6 with or without brackets) is this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("0.0.0.0"), is_loopback("example.com")
    (True, True, False, False)
    """
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str | None:
    """The host part of ``host[:port]`` (brackets of IPv6 removed, lower case); None if malformed."""
    try:
        parts = urlsplit("//" + netloc)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return parts.hostname


@dataclass(frozen=True)
class Access:
    """The handshake checks of one server (see the module docstring)."""

    bound_host: str
    allow_origins: frozenset[str] = field(default_factory=frozenset)
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    token: str | None = None

    @classmethod
    def build(cls, bound_host: str, allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = (),
              token: str | None = None) -> Access:
        """Normalise the options (case, trailing slashes, brackets); an empty token means none."""
        return cls(bound_host=bound_host.strip("[]").lower(),
                   allow_origins=frozenset(o.strip().rstrip("/").lower() for o in allow_origins),
                   allow_hosts=frozenset(h.strip().strip("[]").lower() for h in allow_hosts),
                   token=token or None)

    @property
    def exposed(self) -> bool:
        """True if the server listens beyond this machine (a wildcard or a non-loopback address)."""
        return not is_loopback(self.bound_host)

    def refusal(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
        """Why this handshake is refused (one line, never the token), or None to accept it.

        ``headers`` needs ``get`` (case-insensitive, as the websockets library's are); ``query`` is the
        request's query string as :func:`urllib.parse.parse_qs` parses it.
        """
        host_header = headers.get("Host")
        host = _hostname(host_header) if host_header else None
        if not host:
            return "a Host header is required"
        if not ("*" in self.allow_hosts or host in self.allow_hosts or host == self.bound_host
                or is_loopback(host)):
            return f"Host {host!r} is not allowed (see --allow-host)"
        origin = headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin.strip(), host_header or ""):
            return f"Origin {origin[:100]!r} is not allowed (see --allow-origin)"
        if self.token is not None:
            given = bearer(headers.get("Authorization")) or (query.get("token") or [None])[0]
            if given is None:
                return "a token is required (Authorization: Bearer, or the token query parameter)"
            if not same_token(given, self.token):
                return "wrong token"
        return None

    def _origin_allowed(self, origin: str, host_header: str) -> bool:
        normal = origin.rstrip("/").lower()
        if "*" in self.allow_origins or normal in self.allow_origins:
            return True
        parts = urlsplit(normal)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null", file:, chrome-extension:, ...
        # The server's own pages (its dashboard), reached under a Host that passed the check above.
        return is_loopback(parts.hostname or "") or parts.netloc == host_header.lower()


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None: no header, another scheme, no token).

    >>> bearer(" bearer  abc "), bearer("Basic abc")
    ('abc', None)
    """
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def same_token(given: str, token: str) -> bool:
    """Whether ``given`` is ``token``, compared in constant time (a token is never compared otherwise)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that replaces ``secret`` with ``***`` in every message (the websockets library logs
    request lines and headers at DEBUG level, which would show a token)."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self.secret = secret

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2  # report the library's line, not this one
            self.logger.log(level, "%s", text.replace(self.secret, "***"), **kwargs)
