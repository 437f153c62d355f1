"""The module spec's TLS fields of the async transport (``EndpointTls``): what they read,
and a clear error naming the field for each file that cannot be used."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from tls_pki import Pki, make_pki

from statefun.errors import ModuleSpecError
from statefun.module_spec import EndpointTls, parse_module_spec


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def endpoint_tls(fields: str, url: str = "https://127.0.0.1:1/statefun") -> EndpointTls | None:
    module = parse_module_spec(
        "kind: io.statefun.endpoints.v2/http\n"
        f"spec:\n  functions: a/*\n  urlPathTemplate: {url}\n"
        "  transport:\n    type: io.statefun.transports.v1/async\n"
        + "".join(f"    {line}\n" for line in fields.strip().splitlines())
    )
    return module.endpoints[0].tls


def test_ca_client_certificate_and_encrypted_key_are_read(pki: Pki) -> None:
    tls = endpoint_tls(
        f"""
trust_cacerts: {pki.ca}
client_cert: file://{pki.client_cert}
client_key: file:{pki.client_key_encrypted}
client_key_password: {pki.key_password}
"""
    )
    assert tls is not None
    assert (tls.trust_cacerts, tls.client_cert, tls.client_key, tls.client_key_password) == (
        pki.ca,
        pki.client_cert,
        pki.client_key_encrypted,
        pki.key_password,
    )
    assert tls.verify
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.context.check_hostname
    # only the given CA is trusted, not the system's store besides
    assert len(tls.context.get_ca_certs()) == 1


def test_an_endpoint_without_tls_fields_has_no_settings() -> None:
    assert endpoint_tls("call: 2m") is None


def test_a_path_under_home_is_expanded(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(pki.ca.parent))
    tls = endpoint_tls(f"trust_cacerts: ~/{pki.ca.name}")
    assert tls is not None
    assert tls.trust_cacerts == pki.ca


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            "trust_cacerts: classpath:trusted.pem",
            "trust_cacerts",
            "names a Java classpath resource",
        ),
        ("client_cert: {missing}", "client_cert", "is not a file"),
        ("client_cert: file://elsewhere/c.pem", "client_cert", "names a file on another host"),
        ("trust_cacerts: {password}", "trust_cacerts", "holds no usable PEM CA certificate"),
        ("client_key: {key}", "client_key", "needs client_cert"),
        ("client_cert: {cert}\nclient_key: {server_key}", "client_key", "is not the key of"),
        (
            "client_cert: {cert}\nclient_key: {encrypted}",
            "client_key_password",
            "is required: client_key is encrypted",
        ),
        (
            "client_cert: {cert}\nclient_key: {encrypted}\nclient_key_password: {ca}",
            "client_key_password",
            "does not decrypt client_key",
        ),
        ("client_cert: {ca}", "client_cert", "not a PEM certificate and key"),
        (
            "trust_cacerts: {ca}\ninsecure_skip_verify: true",
            "trust_cacerts",
            "cannot be given with insecure_skip_verify",
        ),
        ("insecure_skip_verify: 'no'", "insecure_skip_verify", "must be bool"),
    ],
)
def test_a_setting_that_cannot_be_used_names_its_field(
    pki: Pki, fields: str, field: str, message: str
) -> None:
    text = fields.format(
        missing=pki.ca.parent / "missing.pem",
        password=pki.key_password,
        key=pki.client_key,
        cert=pki.client_cert,
        server_key=pki.server_key,
        encrypted=pki.client_key_encrypted,
        ca=pki.ca,
    )
    with pytest.raises(ModuleSpecError, match=rf"field 'spec.transport.{field}': .*{message}"):
        endpoint_tls(text)


def test_tls_fields_on_a_plain_http_endpoint_are_an_error(pki: Pki) -> None:
    with pytest.raises(
        ModuleSpecError, match=r"field 'spec.transport.trust_cacerts': applies to https://"
    ):
        endpoint_tls(f"trust_cacerts: {pki.ca}", url="http://127.0.0.1:1/statefun")


def test_an_unreadable_file_is_an_error_naming_the_field(pki: Pki, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pki.ca.read_bytes())
    locked.chmod(0)
    try:
        locked.open("rb").close()
        pytest.skip("running as root: every file is readable")
    except PermissionError:
        pass
    with pytest.raises(
        ModuleSpecError, match=r"field 'spec.transport.trust_cacerts': .*cannot be read"
    ):
        endpoint_tls(f"trust_cacerts: {locked}")


def test_turning_verification_off_is_explicit_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "statefun.module_spec")
    tls = endpoint_tls("insecure_skip_verify: true")
    assert tls is not None
    assert not tls.verify
    assert tls.context.verify_mode == ssl.CERT_NONE
    assert not tls.context.check_hostname
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "field 'spec.transport.insecure_skip_verify'" in warning
    assert "are NOT checked" in warning
