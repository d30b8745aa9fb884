"""The federation's PKI: the coordinator's CA and certificate, their checks, hospitals' node keys."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from federation.errors import CertificateError
from federation.pki import (
    check_server_certificate,
    create_ca,
    issue_server_certificate,
    load_node_public_key,
    split_address,
)


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    create_ca("test", ca, ca_key)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    issue_server_certificate(ca, ca_key, ["coord.example.org", "10.1.2.3"], cert, key, days=30)
    return {"ca": ca, "ca_key": ca_key, "cert": cert, "key": key}


def test_the_certificate_names_the_public_address_and_loopback(pki: dict[str, Path]) -> None:
    for address in ("coord.example.org:9092", "COORD.example.org", "10.1.2.3:443", "127.0.0.1:9093", "localhost"):
        assert check_server_certificate(pki["cert"], pki["ca"], address) is None, address
    assert oct(pki["key"].stat().st_mode & 0o777) == "0o600"
    assert oct(pki["ca_key"].stat().st_mode & 0o777) == "0o600"


def test_a_san_mismatch_names_what_the_certificate_covers(pki: dict[str, Path]) -> None:
    problem = check_server_certificate(pki["cert"], pki["ca"], "other.example.org:9092")
    assert problem is not None and "does not name other.example.org" in problem and "coord.example.org" in problem
    assert check_server_certificate(pki["cert"], pki["ca"], "10.1.2.4") is not None
    assert check_server_certificate(pki["cert"], pki["ca"], "evil.coord.example.org") is not None


def test_another_federations_ca_is_detected(pki: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_ca("test", other / "ca.pem", other / "ca.key")  # same name, another key
    problem = check_server_certificate(pki["cert"], other / "ca.pem", "coord.example.org")
    assert problem is not None and "not issued by the CA" in problem
    problem = check_server_certificate(pki["cert"], pki["cert"], "coord.example.org")  # a leaf given as the CA
    assert problem is not None and "not a CA certificate" in problem


def test_expired_and_not_yet_valid_certificates(pki: dict[str, Path]) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=31)
    problem = check_server_certificate(pki["cert"], pki["ca"], "coord.example.org", at=later)
    assert problem is not None and "expired" in problem and "renew" in problem
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    problem = check_server_certificate(pki["cert"], pki["ca"], "coord.example.org", at=earlier)
    assert problem is not None and "not valid before" in problem
    much_later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4000)
    assert "CA certificate" in (check_server_certificate(pki["cert"], pki["ca"], None, at=much_later) or "")


def test_missing_or_garbled_files_are_one_line(pki: dict[str, Path], tmp_path: Path) -> None:
    assert "no such certificate file" in (check_server_certificate(tmp_path / "nope.pem", pki["ca"]) or "")
    (tmp_path / "junk.pem").write_text("hello")
    assert "not a PEM certificate" in (check_server_certificate(pki["cert"], tmp_path / "junk.pem") or "")


@pytest.mark.parametrize(("address", "expected"), [
    ("coord.example.org", ("coord.example.org", 9092)), ("10.0.0.1:443", ("10.0.0.1", 443)),
    ("[::1]:8443", ("::1", 8443)), ("::1", ("::1", 9092)),
])
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address, 9092) == expected


@pytest.mark.parametrize("address", ["", "host:port", "host:0", ":9092", "host:70000"])
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(CertificateError):
        split_address(address, 9092)


def _openssh(key: object, path: Path) -> Path:
    path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # type: ignore[attr-defined]
    return path


def test_node_keys_are_validated_as_flwr_does(tmp_path: Path) -> None:
    good = load_node_public_key(_openssh(ec.generate_private_key(ec.SECP384R1()).public_key(), tmp_path / "good.pub"))
    assert good.curve == "secp384r1" and good.fingerprint.startswith("SHA256:") and b"BEGIN PUBLIC KEY" in good.pem
    refused = {
        "ed25519": (_openssh(ed25519.Ed25519PrivateKey.generate().public_key(), tmp_path / "ed.pub"), "Ed25519 key"),
        "rsa": (_openssh(rsa.generate_private_key(65537, 2048).public_key(), tmp_path / "rsa.pub"), "RSA key"),
        "garbage": (tmp_path / "junk.pub", "not an OpenSSH public key"),
        "missing": (tmp_path / "missing.pub", "no such key file"),
    }
    (tmp_path / "junk.pub").write_text("ssh-nothing AAAA")
    for name, (path, reason) in refused.items():
        with pytest.raises(CertificateError, match=reason):
            load_node_public_key(path)
        assert name


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_an_ssh_keygen_key_and_its_fingerprint(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", str(tmp_path / "node")], check=True)
    key = load_node_public_key(tmp_path / "node.pub")
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "node.pub")], capture_output=True, text=True, check=True)
    assert key.fingerprint == printed.stdout.split()[1]
    with pytest.raises(CertificateError, match="private key"):
        load_node_public_key(tmp_path / "node")
