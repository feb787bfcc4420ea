"""The options every server takes, live or replay, named once: each with its default, its meaning and, where
the command line has it, its flag (``pipesim serve`` and ``pipesim replay`` make their flags from here).

A server takes them as keywords (``LiveServer(scenario, port=0, token="s3cret")``), as one
:class:`ServerOptions` (``LiveServer(scenario, options=opts)``), or both (the keywords win).

>>> opts = ServerOptions(port=0, allow_origins=["http://app.test:3000"])
>>> opts.port, opts.allow_origins, opts.host
(0, ('http://app.test:3000',), '127.0.0.1')
>>> ServerOptions.of(opts, {"token": "s3cret"}, "LiveServer").token
's3cret'
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipesim import argtypes
from pipesim.errors import LiveError
from pipesim.live.journal import DEFAULT_JOURNAL_SIZE

if TYPE_CHECKING:  # (the TLS room loads cryptography: only a server with TLS needs it)
    from pipesim.live.tls import Tls

__all__ = ["DEFAULT_ADMIN_PORT", "Flag", "ServerOptions"]

#: The admin API's port when ``pipesim serve`` is not told otherwise (a server made in Python has none).
DEFAULT_ADMIN_PORT = 8002


@dataclass(frozen=True)
class Flag:
    """How an option is written on the command line: its flag, its help, how its text is read."""

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    #: The flag may be given more than once (its values are collected).
    repeat: bool = False
    #: The environment variable read when the flag is not given (a secret is better kept off the command line).
    env: str | None = None


def _option(default: Any, doc: str, flag: Flag | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "flag": flag})


@dataclass(frozen=True)
class ServerOptions:
    """Where a server listens, who may connect, its admin API, its journal, recording and slow-client policy.

    ``allow_origins`` and ``allow_hosts`` may be any iterable of strings (kept as tuples).
    """

    host: str = _option("127.0.0.1", "the address or name to bind", Flag(
        "--host", "address or name to bind (default: 127.0.0.1, this machine only; 0.0.0.0: every interface, "
                  "better with --token)"))
    port: int = _option(8001, "the port to listen on (0: a free one, then in the server's ``port``)", Flag(
        "--port", "port to listen on, 0 for any free one (default: 8001)", type=argtypes.port))
    record: str | Path | None = _option(None, "a JSON Lines file recording every message broadcast", Flag(
        "--record", "record every message sent to this JSON Lines file (default: none)"))
    client_queue: int = _option(1000, "messages a client may fall behind before it is disconnected (1013)")
    close_timeout: float = _option(2.0, "seconds a client has to complete the close handshake before its TCP "
                                        "connection is aborted")
    send_buffer: int | None = _option(128 * 1024, "each client socket's send buffer, bytes (None: the OS default)")
    static_dir: str | Path | None = _option(None, "the dashboard's folder (None: the bundled page)")
    allow_origins: tuple[str, ...] = _option((), "more origins whose pages may connect (``*``: any)", Flag(
        "--allow-origin", "also accept WebSocket connections from pages of this origin, e.g. "
                          "https://app.example:3000; '*' accepts any, 'null' sandboxed pages; repeatable (default: "
                          "only pages of http(s)://localhost, 127.0.0.1 or [::1] on any port, and the server's own)",
        metavar="ORIGIN", repeat=True))
    allow_hosts: tuple[str, ...] = _option((), "more names accepted in the Host header (``*``: any)", Flag(
        "--allow-host", "also accept this name or address in the Host header, e.g. the machine's name when "
                        "binding 0.0.0.0; '*' accepts any; repeatable (default: loopback names and addresses and "
                        "--host)", metavar="HOST", repeat=True))
    token: str | None = _option(None, "the token a WebSocket handshake must carry (None: none)", Flag(
        "--token", "require this token to open /ws, as 'Authorization: Bearer TOKEN' or '?token=TOKEN' "
                   "(open the dashboard as http://HOST:PORT/?token=TOKEN); prefer $PIPESIM_TOKEN, as other users "
                   "can see a command line (default: $PIPESIM_TOKEN if set, else no token)", env="PIPESIM_TOKEN"))
    admin_port: int | None = _option(None, "the admin API's port on 127.0.0.1 (0: a free one; None: no admin API)",
                                     Flag("--admin-port", "port of the admin API (http://127.0.0.1:PORT/__admin, "
                                          "always on loopback), 0 for any free one (default: 8002, or a free one "
                                          "with --port 0 so parallel servers never clash)", type=argtypes.port))
    admin_token: str | None = _option(None, "the token the admin API requires (None: none)", Flag(
        "--admin-token", "require 'Authorization: Bearer TOKEN' on the admin API; prefer $PIPESIM_ADMIN_TOKEN "
                         "(default: $PIPESIM_ADMIN_TOKEN if set, else no token)", env="PIPESIM_ADMIN_TOKEN"))
    journal_size: int = _option(DEFAULT_JOURNAL_SIZE, "messages the admin API's journal keeps (0: no journal)", Flag(
        "--journal-size", "messages the admin API's journal keeps, 0 for none (default: 10000)",
        type=argtypes.journal_size, metavar="N"))
    tls: Tls | None = _option(None, "the certificate and key: every endpoint, the admin API's too, over TLS "
                                    "(wss://, https://); see pipesim.live.tls")

    def __post_init__(self) -> None:
        for name in ("allow_origins", "allow_hosts"):  # any iterable, kept as a tuple (the options are frozen)
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def of(cls, options: ServerOptions | None, keywords: Mapping[str, Any], owner: str) -> ServerOptions:
        """``options`` (None: the defaults) with ``keywords`` laid over them; a keyword that is no option is
        the ``TypeError`` Python gives for a wrong keyword of ``owner``."""
        unknown = sorted(set(keywords) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
        return replace(options if options is not None else cls(), **keywords)

    # The command line ------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> None:
        """Give ``parser`` the flags of every option that has one (but those named in ``skip``)."""
        for f in fields(cls):
            flag: Flag | None = f.metadata["flag"]
            if flag is None or f.name in skip:
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "help": flag.help, "metavar": flag.metavar}
            if flag.repeat:
                kwargs.update(action="append", default=[])
            else:
                kwargs.update(type=flag.type, default=None if flag.env else f.default)
            parser.add_argument(flag.name, **kwargs)
            if f.name == "admin_port":
                parser.add_argument("--no-admin", action="store_true", help="no admin API (default: on, on 127.0.0.1)")
        parser.add_argument("--tls-cert", metavar="FILE", help="serve wss:// and https:// (every endpoint, the admin "
                            "API too) with this PEM certificate (the server's first, then any intermediates); "
                            "with --tls-key")
        parser.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (unencrypted)")
        parser.add_argument("--tls-self-signed", action="store_true",
                            help="serve wss:// and https:// with a certificate for localhost, 127.0.0.1 and ::1 from "
                                 "a local CA pipesim makes once and keeps in --tls-dir (trust it once: the "
                                 "command prints how)")
        parser.add_argument("--tls-dir", metavar="DIR", help="where --tls-self-signed keeps its CA and certificate "
                            "(default: pipesim/tls in the user's cache folder, e.g. ~/.cache/pipesim/tls)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerOptions:
        """The options of a ``pipesim serve`` or ``replay`` command line (see :meth:`add_arguments`): a flag's
        environment variable when the flag is not given, and the admin API on :data:`DEFAULT_ADMIN_PORT` (a free
        port with ``--port 0``) unless ``--no-admin``."""
        given: dict[str, Any] = {}
        for f in fields(cls):
            flag: Flag | None = f.metadata["flag"]
            if flag is None or not hasattr(args, f.name):
                continue
            value = getattr(args, f.name)
            if flag.env is not None:
                value = value or os.environ.get(flag.env) or None
            given[f.name] = value
        admin = args.admin_port if args.admin_port is not None else 0 if args.port == 0 else DEFAULT_ADMIN_PORT
        given["admin_port"] = None if args.no_admin else admin
        given["tls"] = _tls_from_args(args)
        return cls(**given)


def _tls_from_args(args: argparse.Namespace) -> Tls | None:
    """``--tls-cert``/``--tls-key`` (checked now) or ``--tls-self-signed`` [``--tls-dir``], or no TLS."""
    from pipesim.live import tls

    if args.tls_self_signed:
        if args.tls_cert or args.tls_key:
            raise LiveError("--tls-self-signed makes its own certificate: leave out --tls-cert and --tls-key")
        return tls.self_signed(args.tls_dir)
    if args.tls_dir:
        raise LiveError("--tls-dir is where --tls-self-signed keeps its certificate: add --tls-self-signed")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise LiveError(f"{'--tls-cert' if args.tls_cert else '--tls-key'} needs "
                        f"{'--tls-key' if args.tls_cert else '--tls-cert'} too")
    return tls.Tls.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
