"""Signed function calls: what a signature covers, the replay window, keys and key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from statefun.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RequestSigner,
    SignatureError,
    SignatureVerifier,
    load_private_key,
    private_key_from_pem,
    public_keys,
    write_key_pair,
)

NOW = 1_800_000_000.0
BODY = b"\x81\xa7batches\x90"


def signed(key: Ed25519PrivateKey, body: bytes = BODY, at: float = NOW) -> dict[str, str]:
    return dict(RequestSigner(key, clock=lambda: at).headers("POST", body))


def verifier(*keys: Ed25519PrivateKey, window: float = 300) -> SignatureVerifier:
    return SignatureVerifier([k.public_key() for k in keys], window=window, clock=lambda: NOW)


def refusal(check: SignatureVerifier, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as info:
        check.check("POST", headers, body)
    return info.value.code


def test_a_signed_request_passes_and_a_changed_one_does_not() -> None:
    key = Ed25519PrivateKey.generate()
    check, headers = verifier(key), signed(key)
    check.check("POST", headers, BODY)
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert refusal(check, headers, BODY + b"x") == "bad_signature"
    with pytest.raises(SignatureError, match="does not match"):
        check.check("GET", headers, BODY)
    moved = {**headers, TIMESTAMP_HEADER: str(int(NOW) + 1)}
    assert refusal(check, moved) == "bad_signature"


def test_a_signature_by_another_key_is_refused() -> None:
    forged = signed(Ed25519PrivateKey.generate())
    assert refusal(verifier(Ed25519PrivateKey.generate()), forged) == "bad_signature"


def test_the_replay_window_holds_either_way() -> None:
    key = Ed25519PrivateKey.generate()
    check = verifier(key, window=300)
    check.check("POST", signed(key, at=NOW - 300), BODY)
    check.check("POST", signed(key, at=NOW + 300), BODY)
    with pytest.raises(SignatureError, match="301 s behind") as info:
        check.check("POST", signed(key, at=NOW - 301), BODY)
    assert info.value.code == "stale_signature"
    assert refusal(check, signed(key, at=NOW + 301)) == "stale_signature"


def test_missing_or_malformed_headers_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    check, headers = verifier(key), signed(key)
    assert refusal(check, {}) == "missing_signature"
    assert refusal(check, {TIMESTAMP_HEADER: headers[TIMESTAMP_HEADER]}) == "missing_signature"
    assert refusal(check, {**headers, TIMESTAMP_HEADER: "-5"}) == "bad_signature"
    full_width_digits = "\uff11\uff12"
    assert refusal(check, {**headers, TIMESTAMP_HEADER: full_width_digits}) == "bad_signature"
    assert refusal(check, {**headers, SIGNATURE_HEADER: "not base64!"}) == "bad_signature"
    assert refusal(check, {**headers, SIGNATURE_HEADER: "AAAA"}) == "bad_signature"


def test_while_rotating_either_key_passes() -> None:
    old, new, other = (Ed25519PrivateKey.generate() for _ in range(3))
    check = verifier(old, new)
    check.check("POST", signed(old), BODY)
    check.check("POST", signed(new), BODY)
    assert refusal(check, signed(other)) == "bad_signature"


def test_a_key_pair_on_disk(tmp_path: Path) -> None:
    private_path, public_path = write_key_pair(tmp_path / "keys")
    assert (private_path.name, public_path.name) == (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_path.parent.stat().st_mode) == 0o700
    key = load_private_key(private_path)
    pem = public_path.read_text()
    for given in (public_path, str(public_path), pem, pem.encode(), key.public_key()):
        SignatureVerifier(given, clock=lambda: NOW).check("POST", signed(key), BODY)
    with pytest.raises(FileExistsError, match="exists already"):
        write_key_pair(tmp_path / "keys")
    assert load_private_key(private_path) is not None  # left as it was


def test_bad_keys_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_private_key(tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        private_key_from_pem(b"hello")
    other = Ed25519PrivateKey.generate().public_key()
    public_pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        private_key_from_pem(public_pem)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="another kind of private key than Ed25519"):
        private_key_from_pem(ec_pem)
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="another kind of public key than Ed25519"):
        public_keys(ec_public)
    with pytest.raises(ValueError, match=r"absent\.pub\.pem"):
        public_keys(tmp_path / "absent.pub.pem")
    with pytest.raises(ValueError, match="not a PEM public key"):
        public_keys(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="no public key"):
        public_keys([])
    with pytest.raises(ValueError, match="replay window"):
        SignatureVerifier(other, window=0)
