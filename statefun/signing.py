"""Signed function calls: what the runtime signs, how an endpoint checks it, and the keys.

The runtime signs every request it sends to a function endpoint that has a signing key
(module spec ``signing``); the SDK's app checks the signature when given the public key
(``asgi_app(verify_key=...)``). Both sides build on this module, so what is signed is
written down once.

**Ed25519, not HMAC.** With HMAC the endpoint would hold the same secret the runtime signs
with, so any function host (often many, run by other teams) could forge calls to every
other endpoint sharing that secret. With Ed25519 the runtime alone holds the private key
and an endpoint holds only a public key, which is worthless to a thief; this is what
Restate's request identity does too. The cost is small: about 30 µs to sign a request
and 90 µs to verify one (``python -m bench.signing``).

**What is signed**, as bytes: ``statefun-signature-v1``, the HTTP method, the timestamp
(decimal seconds since the epoch, sent in ``statefun-timestamp``) and the SHA-256 of the
body, joined by newlines (:func:`signed_bytes`); the signature travels base64-encoded in
``statefun-signature``. The body is hashed once with SHA-256 rather than handed whole to
Ed25519, which would hash it twice. The URL path is not signed: the body names every
address it calls, and a proxy that rewrites the path must not break signatures.

**Replay window.** An endpoint refuses a signature whose timestamp is more than
``window`` seconds (default 300) away from its own clock, either way. Within the
window a captured request can be sent again: it runs the functions with the state the
runtime sent, and the answer goes to whoever replayed it, never into the runtime's
state. Keep the endpoints behind TLS so requests cannot be captured at all.

**Keys** are PEM files (PKCS#8 private keys, SubjectPublicKeyInfo public keys, as
``openssl genpkey -algorithm ed25519`` writes them); :func:`write_key_pair` makes a pair
(``statefun keys new DIR``). To rotate, give the endpoints the new public key beside the
old one (``verify_key`` takes several), switch the runtime to the new private key, then
drop the old public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from statefun.errors import StatefunError

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "PublicKeys",
    "RequestSigner",
    "SignatureError",
    "SignatureVerifier",
    "load_private_key",
    "private_key_from_pem",
    "public_keys",
    "signed_bytes",
    "write_key_pair",
]

SIGNATURE_HEADER = "statefun-signature"
TIMESTAMP_HEADER = "statefun-timestamp"
DEFAULT_REPLAY_WINDOW = 300.0
"""Seconds a signature's timestamp may be away from the endpoint's clock."""
PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"
_VERSION = b"statefun-signature-v1"
_PEM = "-----BEGIN"

_PublicKey = Ed25519PublicKey | str | bytes | os.PathLike[str]
PublicKeys = _PublicKey | Iterable[_PublicKey]
"""What ``verify_key`` accepts: a key, PEM text, a PEM file's path, or several of them."""


class SignatureError(StatefunError):
    """A request's signature is missing, wrong or outside the replay window.

    ``code`` is ``missing_signature``, ``bad_signature`` or ``stale_signature``.
    """

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def signed_bytes(method: str, timestamp: str, body: bytes) -> bytes:
    """The bytes whose Ed25519 signature a request carries."""
    digest = hashlib.sha256(body).digest()
    return b"\n".join((_VERSION, method.encode("ascii"), timestamp.encode("ascii"), digest))


class RequestSigner:
    """Signs requests with a private key; ``clock`` gives seconds since the epoch."""

    __slots__ = ("_clock", "_key")

    def __init__(self, key: Ed25519PrivateKey, clock: Callable[[], float] = time.time):
        self._key = key
        self._clock = clock

    def headers(self, method: str, body: bytes) -> tuple[tuple[str, str], tuple[str, str]]:
        """The timestamp and signature headers of a request."""
        timestamp = str(int(self._clock()))
        signature = self._key.sign(signed_bytes(method, timestamp, body))
        return (
            (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, base64.b64encode(signature).decode("ascii")),
        )


class SignatureVerifier:
    """Checks requests against one or more public keys (several while rotating)."""

    __slots__ = ("_clock", "_keys", "_window")

    def __init__(
        self,
        keys: PublicKeys,
        *,
        window: float = DEFAULT_REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
    ):
        if window <= 0:
            raise ValueError(f"the replay window must be positive, got {window!r}")
        self._keys = public_keys(keys)
        self._window = window
        self._clock = clock

    def check(self, method: str, headers: Mapping[str, str], body: bytes) -> None:
        """Return if the request is signed by one of the keys within the window, else
        raise :class:`SignatureError`. ``headers`` are looked up by lower-case name."""
        timestamp = headers.get(TIMESTAMP_HEADER)
        encoded = headers.get(SIGNATURE_HEADER)
        if timestamp is None or encoded is None:
            raise SignatureError(
                "missing_signature",
                f"the request needs {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers",
            )
        if not timestamp.isascii() or not timestamp.isdigit():
            raise SignatureError("bad_signature", f"{TIMESTAMP_HEADER} must be whole seconds")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("bad_signature", f"{SIGNATURE_HEADER} is not base64") from None
        message = signed_bytes(method, timestamp, body)
        for key in self._keys:
            try:
                key.verify(signature, message)
                break
            except InvalidSignature:
                continue
        else:
            raise SignatureError("bad_signature", "the signature does not match the request")
        # Checked after the signature, so only a signed timestamp is reported as stale.
        skew = int(timestamp) - self._clock()
        if abs(skew) > self._window:
            raise SignatureError(
                "stale_signature",
                f"the signature's timestamp is {abs(skew):.0f} s "
                f"{'ahead of' if skew > 0 else 'behind'} the endpoint's clock "
                f"(the replay window is {self._window:g} s)",
            )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PEM; ValueError says what is wrong."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(
            "holds another kind of private key than Ed25519 (make one with: statefun keys new DIR)"
        )
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path``; ValueError says what is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot be read: {e.strerror}") from None
    return private_key_from_pem(data)


def _public_key(given: _PublicKey) -> Ed25519PublicKey:
    if isinstance(given, Ed25519PublicKey):
        return given
    if isinstance(given, bytes):
        data = given
    elif isinstance(given, str) and given.lstrip().startswith(_PEM):
        data = given.encode("ascii")
    else:
        try:
            data = Path(given).read_bytes()
        except OSError as e:
            raise ValueError(f"public key file {os.fspath(given)!r}: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ValueError(f"not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("another kind of public key than Ed25519")
    return key


def public_keys(keys: PublicKeys) -> tuple[Ed25519PublicKey, ...]:
    """Ed25519 public keys from a key, PEM text or bytes, a PEM file's path, or several."""
    if isinstance(keys, Ed25519PublicKey | str | bytes | os.PathLike):
        found: tuple[Ed25519PublicKey, ...] = (_public_key(keys),)
    else:
        found = tuple(_public_key(k) for k in keys)
    if not found:
        raise ValueError("no public key given")
    return found


def write_key_pair(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Make a key pair in ``directory`` (created 0700 if missing): the private key file
    (mode 0600) for the runtime and the public key file for the endpoints. Refuses to
    overwrite either (FileExistsError)."""
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists already")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path
