"""TLS for a live or replay server: its certificate and key, checked, as the ssl contexts the servers use, and
a local certificate authority for ``--tls-self-signed``.

With :class:`Tls` in its options a server speaks ``wss://`` and ``https://`` on every endpoint (the dashboard,
``/ws``, ``/rtvi``, ``/healthz``, ``/stats``) and its admin API speaks ``https://`` with the same certificate;
the access checks are unchanged. :func:`self_signed` makes (once) a CA and a certificate for ``localhost``,
``127.0.0.1`` and ``::1`` with ``trustme``, kept in a folder (:func:`default_tls_dir` unless told), so that a
browser or a test runner trusts the CA once and every later run is trusted too. :func:`trust_hints` says how.

>>> import tempfile
>>> tls = self_signed(tempfile.mkdtemp())
>>> tls.ca is not None and tls.ca.name
'ca.pem'
>>> client = tls.client_context()   # what a Python client that trusts the CA uses
>>> len(tls.spki_sha256()) # base64 of a SHA-256: Chromium's --ignore-certificate-errors-spki-list takes it
44
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from pipesim.errors import LiveError

__all__ = ["Tls", "default_tls_dir", "self_signed", "trust_hints"]

#: What the self-signed certificate is for: the loopback names and addresses a local frontend uses.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_CA, _CA_KEY, _CERT, _KEY = "ca.pem", "ca-key.pem", "localhost.pem", "localhost-key.pem"


@dataclass(frozen=True)
class Tls:
    """A server's certificate (``cert``: PEM, the server's first, then any intermediates) and private key
    (``key``: PEM, unencrypted); ``ca``, the CA file to trust, when pipesim made them (:func:`self_signed`)."""

    cert: Path
    key: Path
    ca: Path | None = None

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, ca: str | Path | None = None) -> Tls:
        """The pair, checked now: a :class:`~pipesim.errors.LiveError` naming the file and what is wrong."""
        tls = cls(Path(cert), Path(key), Path(ca) if ca is not None else None)
        tls.server_context()
        return tls

    def server_context(self) -> ssl.SSLContext:
        """The server side's context (TLS 1.2 and later, Python's defaults); a bad file is one clear line."""
        certs = _read(self.cert, "certificate (--tls-cert)")
        try:
            first = x509.load_pem_x509_certificate(certs)
        except ValueError:
            raise LiveError(f"the TLS certificate {self.cert} (--tls-cert) is not a PEM certificate "
                            "(-----BEGIN CERTIFICATE-----)") from None
        expires = _not_after(first)
        if expires < datetime.now(UTC):
            raise LiveError(f"the TLS certificate {self.cert} (--tls-cert) expired on {expires:%Y-%m-%d}")
        key = _read(self.key, "private key (--tls-key)")
        try:
            load_pem_private_key(key, password=None)
        except TypeError:
            raise LiveError(f"the TLS private key {self.key} (--tls-key) is encrypted: give it without a "
                            "passphrase") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise LiveError(f"the TLS private key {self.key} (--tls-key) is not a PEM private key "
                            f"({str(exc).splitlines()[0][:80] or 'unreadable'})") from None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            why = "does not belong to" if "KEY_VALUES_MISMATCH" in str(exc) else f"cannot be used with ({exc.reason})"
            raise LiveError(f"the TLS private key {self.key} (--tls-key) {why} the certificate {self.cert} "
                            "(--tls-cert)") from None
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client's context that trusts :attr:`ca` (the system's CAs without one)."""
        return ssl.create_default_context(cafile=self.ca)

    def spki_sha256(self) -> str:
        """Base64 of the SHA-256 of the certificate's public key (its SubjectPublicKeyInfo): the pin that
        Chromium's ``--ignore-certificate-errors-spki-list`` takes."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LiveError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def _not_after(cert: x509.Certificate) -> datetime:
    after = getattr(cert, "not_valid_after_utc", None)  # cryptography 42; before, a naive UTC datetime
    return after if after is not None else cert.not_valid_after.replace(tzinfo=UTC)


def default_tls_dir() -> Path:
    """Where :func:`self_signed` keeps the CA and the certificate unless told: ``pipesim/tls`` in the user's
    cache folder (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pipesim" / "tls"


def self_signed(folder: str | Path | None = None) -> Tls:
    """A certificate for ``localhost``, ``127.0.0.1`` and ``::1`` from a local CA, both kept in ``folder``
    (None: :func:`default_tls_dir`): made the first time, the same ones afterwards (trust the CA once)."""
    import trustme  # only when asked for: the servers do not need it

    folder = Path(folder) if folder is not None else default_tls_dir()
    paths = {name: folder / name for name in (_CA, _CA_KEY, _CERT, _KEY)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if paths[_CA].exists() and paths[_CA_KEY].exists():
            ca = trustme.CA.from_pem(paths[_CA].read_bytes(), paths[_CA_KEY].read_bytes())
        else:
            ca = trustme.CA(organization_name="pipesim", organization_unit_name="pipesim local CA")
            _write(paths[_CA_KEY], ca.private_key_pem.bytes(), secret=True)
            _write(paths[_CA], ca.cert_pem.bytes())
        if not (paths[_CERT].exists() and paths[_KEY].exists() and _issued_by(paths[_CERT], paths[_CA])):
            leaf = ca.issue_cert(*LOCAL_NAMES, organization_name="pipesim", common_name="localhost")
            _write(paths[_KEY], leaf.private_key_pem.bytes(), secret=True)
            _write(paths[_CERT], b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    except OSError as exc:
        raise LiveError(f"cannot keep the TLS certificate in {folder} (--tls-dir): {exc.strerror or exc}") from None
    except ValueError as exc:  # a file there that is not what pipesim wrote
        raise LiveError(f"{folder} (--tls-dir) holds a CA pipesim cannot read ({exc}): remove {_CA} and "
                        f"{_CA_KEY} to make a new one") from None
    return Tls.from_files(paths[_CERT], paths[_KEY], paths[_CA])


def _issued_by(cert: Path, ca: Path) -> bool:
    """Whether ``cert`` was issued by ``ca`` and has more than a day to live (else a new one is made)."""
    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        authority = x509.load_pem_x509_certificate(ca.read_bytes())
    except ValueError:
        return False
    return leaf.issuer == authority.subject and (_not_after(leaf) - datetime.now(UTC)).days >= 1


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    """Write ``data`` whole or not at all (another process may read the folder meanwhile); a key for the
    user alone."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o600 if secret else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trust_hints(tls: Tls) -> list[str]:
    """How to trust the server's certificate, one line each: the CA file for Node.js (a Vite dev server, a
    Playwright runner), for Python's ``ssl``, and for Chromium (a pin of this certificate's key, which
    headless Chromium honours, or the CA in the user's NSS database, which a desktop Chrome reads)."""
    if tls.ca is None:
        return [f"the certificate {tls.cert} is yours: trust its CA as you do elsewhere"]
    ca = tls.ca
    return [f"the CA to trust: {ca}",
            f"Node.js (Vite, Playwright's test runner): NODE_EXTRA_CA_CERTS={ca}",
            f"Python: ssl.create_default_context(cafile={str(ca)!r})",
            f"Chromium/Playwright: --ignore-certificate-errors-spki-list={tls.spki_sha256()} (pins this "
            "certificate's key; needs --user-data-dir, which Playwright sets)",
            f"Chrome/Chromium on Linux, once: certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n pipesim -i {ca}"]
