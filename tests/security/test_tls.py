"""Point 11 of the Trust issue: TLS where it can be had.

``imgstore serve --ssl-certfile --ssl-keyfile`` serves https (AddCephBackupStorage
carries mon passwords in its body); the Python client and the CLI speak https and check
the server against a CA file (``ca_file=``, ``--ca-file``, ``IMGSTORE_CA_FILE``), and
refuse a server they cannot verify. The certificate is a self-signed one made here.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imgstore.client.http import ImgstoreClient, ImgstoreError
from tests.conftest import ADMIN_PASSWORD, Server, run_command


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgstore test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(url, certificate) of an ``imgstore serve`` speaking https only."""
    cert, key = self_signed(tmp_path)
    server = Server(tmp_path / "data", args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], ca_file=cert)
    try:
        yield server.start().url, cert
    finally:
        server.stop()
        server.drop_database()


def test_the_client_speaks_https_and_checks_the_server(https_server: tuple[str, Path]) -> None:
    url, cert = https_server
    with ImgstoreClient(url, ca_file=cert) as client:
        client.login("admin", ADMIN_PASSWORD)
        assert client.query("QueryZone")["inventories"] == []
        r = client._http.delete(f"{url}/zstack/v1/images/{uuid.uuid4().hex}",
                                headers={"Authorization": f"OAuth {client.session}", "Prefer": "respond-async"})
        assert r.json()["location"].startswith(f"{url}/zstack/v1/api-jobs/")  # https, the listening address
    with ImgstoreClient(url) as unverified, pytest.raises(ImgstoreError) as e:
        unverified.login("admin", ADMIN_PASSWORD)  # the system's CAs do not know this server
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value.details)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http") + "/zstack/v1/zones", timeout=5)  # no plain http


def test_the_cli_speaks_https_with_a_ca_file(https_server: tuple[str, Path], tmp_path: Path) -> None:
    url, cert = https_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_command([sys.executable, "-m", "imgstore.cli.commands", *args], env)

    refused = cli("login", "--url", url, "--password", ADMIN_PASSWORD)
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    out = cli("login", "--url", url, "--password", ADMIN_PASSWORD, "--ca-file", str(cert))
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "config" / "imgstore" / "session.json").read_text())
    assert saved["url"] == url and saved["ca_file"] == str(cert.resolve())
    out = cli("QueryZone", "--json")
    assert out.returncode == 0, out.stderr
