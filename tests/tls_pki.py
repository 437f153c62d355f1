"""A test public-key infrastructure in files: a CA, a server certificate for 127.0.0.1, a
client certificate (mutual TLS), an encrypted copy of the client key and a CA that signed
nothing here (a wrong CA). Made fresh with ``trustme``; nothing leaves the test's folder."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

KEY_PASSWORD = "open sesame"


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA certificate (PEM) that signed the server and client certificates."""
    other_ca: Path
    """A CA certificate that signed nothing here."""
    server_cert: Path
    """For 127.0.0.1 only (not ``localhost``)."""
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    """``client_key`` encrypted with ``KEY_PASSWORD``, which ``key_password`` holds."""
    key_password: Path

    def server_options(self) -> dict[str, object]:
        """uvicorn's settings to serve https and require a client certificate of ``ca``."""
        return {
            "ssl_certfile": str(self.server_cert),
            "ssl_keyfile": str(self.server_key),
            "ssl_ca_certs": str(self.ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("runtime@example.com")

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    )
    return Pki(
        ca=write("ca.pem", ca.cert_pem.bytes()),
        other_ca=write("other-ca.pem", other.cert_pem.bytes()),
        server_cert=write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
        server_key=write("server.key", server.private_key_pem.bytes()),
        client_cert=write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems)),
        client_key=write("client.key", client.private_key_pem.bytes()),
        client_key_encrypted=write("client-encrypted.key", encrypted),
        key_password=write("key-password.txt", f"{KEY_PASSWORD}\n".encode()),
    )
