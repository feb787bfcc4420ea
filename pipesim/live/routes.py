"""The plain HTTP side of a live or replay server's port: ``/healthz``, ``/stats``, the dashboard page and its
files, ``404`` for the rest; and the access check of a WebSocket handshake's headers.

Any path is answered, whatever its length or characters: a file under ``/static/`` is looked up among the
files that exist, never handed to the file system.

>>> "../secret" in static_files(STATIC_DIR)
False
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from pipesim.live.access import Access

STATIC_DIR = Path(__file__).resolve().parent / "static"
FALLBACK_PAGE = """<!doctype html><meta charset="utf-8"><title>pipesim</title>
<h1>pipesim live server</h1>
<p>The dashboard page is not installed (<code>pipesim/live/static/index.html</code>).
Connect a WebSocket client to <code>/ws</code> (all sessions) or <code>/ws?session_id=ID</code>.</p>
"""


def answer(connection: ServerConnection, path: str, static_dir: Path, stats: Callable[[], dict[str, Any]]) -> Response:
    """The answer to a plain HTTP request for ``path`` (``stats()``: the ``/stats`` counters)."""
    if path == "/healthz":
        return connection.respond(200, "ok\n")
    if path == "/stats":
        return text_response(connection, 200, json.dumps(stats()), "application/json")
    if path in ("/", "/index.html"):
        page = static_dir / "index.html"
        if page.is_file():
            return file_response(connection, page)
        return text_response(connection, 200, FALLBACK_PAGE, "text/html; charset=utf-8")
    if path.startswith("/static/"):
        # Look the name up among the files that exist rather than handing it to the file system: no
        # name (too long, NUL, ../, undecodable) can then fail or escape.
        target = static_files(static_dir).get(path.removeprefix("/static/"))
        if target is not None:
            return file_response(connection, target)
    return connection.respond(404, "not found\n")



def static_files(base: Path) -> dict[str, Path]:
    """The dashboard's files by their name under ``/static/`` (a handful: listed on every request)."""
    return {p.relative_to(base).as_posix(): p for p in base.rglob("*") if p.is_file()} if base.is_dir() else {}


def handshake_refusal(access: Access, request: Request, query: str) -> str | None:
    """Why a WebSocket handshake is refused (one line), or None: :meth:`Access.refusal` of its headers."""
    headers: dict[str, str] = {}
    for name in ("Host", "Origin", "Authorization"):
        values = request.headers.get_all(name)
        if len(values) > 1:
            return f"more than one {name} header"
        if values:
            headers[name] = values[0]
    return access.refusal(headers, parse_qs(query))


def text_response(connection: ServerConnection, status: int, body: str | bytes, content_type: str) -> Response:
    response = connection.respond(status, "")
    data = body.encode() if isinstance(body, str) else body
    response.body = data
    # Headers are multi-valued: setting appends, so delete the plain-text defaults first.
    for name, value in (("Content-Length", str(len(data))), ("Content-Type", content_type)):
        del response.headers[name]
        response.headers[name] = value
    return response


def file_response(connection: ServerConnection, path: Path) -> Response:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
        content_type += "; charset=utf-8"
    response = text_response(connection, 200, path.read_bytes(), content_type)
    response.headers["Cache-Control"] = "no-cache"
    return response
