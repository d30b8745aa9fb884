"""The federation's PKI: the coordinator's CA and TLS certificate, hospitals' node keys, their checks."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.errors import CertificateError

__all__ = [
    "LOOPBACK_NAMES",
    "NodeKey",
    "check_server_certificate",
    "create_ca",
    "issue_server_certificate",
    "load_certificate",
    "load_node_public_key",
    "parse_node_key",
    "split_address",
    "write_private_key",
]

#: Names the coordinator's certificate always carries: the SuperLink listens on loopback and
#: the launcher and the proxy dial it there.
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
#: Curves flwr accepts for SuperNode keys (``flwr.supercore.primitives.asymmetric.uses_nist_ec_curve``).
_NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` for IPv6) into host and port."""
    address = address.strip()
    if not address:
        raise CertificateError("empty address: give HOST or HOST:PORT")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise CertificateError(f"{address!r}: the port must be a number (HOST:PORT)") from None
    if not host or not 0 < port < 65536:
        raise CertificateError(f"{address!r}: give HOST or HOST:PORT with a port between 1 and 65535")
    return host, port


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_private_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write a private key (PEM, unencrypted) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_ca(name: str, cert_path: Path, key_path: Path, *, days: int = 3650) -> x509.Certificate:
    """A self-signed CA (P-384) for one federation; its key signs the coordinator's certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    start = _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_private_key(key, key_path)
    _write_cert(cert, cert_path)
    return cert


def issue_server_certificate(
    ca_cert_path: Path, ca_key_path: Path, hosts: list[str], cert_path: Path, key_path: Path, *, days: int = 825,
) -> x509.Certificate:
    """A TLS server certificate signed by the CA whose SANs are ``hosts`` plus loopback."""
    ca_cert = load_certificate(ca_cert_path)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{ca_key_path}: not the federation CA's EC key")
    names = list(dict.fromkeys([*hosts, *LOOPBACK_NAMES]))
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now() - datetime.timedelta(minutes=5)
    end = min(start + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private_key(key, key_path)
    _write_cert(cert, cert_path)
    return cert


def load_certificate(path: Path) -> x509.Certificate:
    """The first PEM certificate in ``path``; one-line errors for a missing or garbled file."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such certificate file") from None
    except ValueError:
        raise CertificateError(f"{path}: not a PEM certificate") from None


def _san_matches(cert: x509.Certificate, host: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        for dns in sans.get_values_for_type(x509.DNSName):
            pattern = dns.lower().rstrip(".")
            if pattern == host or (pattern.startswith("*.") and host.count(".") >= 2
                                   and host.split(".", 1)[1] == pattern[2:]):
                return True
        return False
    return ip in sans.get_values_for_type(x509.IPAddress)


def check_server_certificate(cert_path: Path, ca_path: Path, address: str | None = None, *,
                             at: datetime.datetime | None = None) -> str | None:
    """What is wrong with a server certificate for hospitals that trust ``ca_path`` and dial
    ``address`` (``HOST[:PORT]``), as one line saying what to fix; None when it is fine.

    Checks: both files are certificates, the CA is a CA and signed the certificate, both are
    valid at ``at`` (default: now), and a SAN names the address's host.
    """
    try:
        cert, ca = load_certificate(cert_path), load_certificate(ca_path)
    except CertificateError as e:
        return str(e)
    when = at or _now()
    if ca.not_valid_after_utc < when:
        return f"the CA certificate {ca_path} expired on {ca.not_valid_after_utc:%Y-%m-%d}: the coordinator must make a new CA"
    if cert.not_valid_after_utc < when:
        return (f"the coordinator's certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
                "renew it (bioverse coordinator init --force)")
    if cert.not_valid_before_utc > when:
        return f"the coordinator's certificate {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check the clocks"
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return f"{ca_path} is not a CA certificate: use the CA certificate the coordinator handed out (ca.pem)"
    try:
        if cert.issuer != ca.subject:
            raise InvalidSignature
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return (f"{cert_path} was not issued by the CA in {ca_path}: this is another federation's CA, "
                "ask the coordinator for its ca.pem")
    if address:
        try:
            host, _ = split_address(address, 443)
        except CertificateError as e:
            return str(e)
        if not _san_matches(cert, host):
            return (f"the coordinator's certificate does not name {host}: dial an address it names "
                    f"({', '.join(_san_names(cert))}) or re-issue it with that address")
    return None


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]


@dataclass(frozen=True)
class NodeKey:
    """A hospital's SuperNode public key, as flwr registers it.

    Attributes:
        pem: The key as SubjectPublicKeyInfo PEM (the bytes flwr stores and compares).
        openssh: The key's OpenSSH line (what the hospital handed over, without comment).
        fingerprint: ``SHA256:<base64>`` of the OpenSSH blob, as ``ssh-keygen -lf`` prints it.
        curve: The NIST curve's name.
    """

    pem: bytes
    openssh: str
    fingerprint: str
    curve: str

    @classmethod
    def from_public_key(cls, key: ec.EllipticCurvePublicKey) -> NodeKey:
        openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        blob = base64.b64decode(openssh.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(pem=pem, openssh=openssh, fingerprint=f"SHA256:{digest}", curve=key.curve.name)


def load_node_public_key(path: Path) -> NodeKey:
    """A hospital's node key file (OpenSSH public key, ECDSA on a NIST curve), validated as
    flwr's ``supernode register`` does; a one-line error says what is wrong with it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such key file (the hospital's KEY.pub)") from None
    return parse_node_key(data, str(path))


def parse_node_key(data: bytes, where: str = "the key") -> NodeKey:
    """A node key from its OpenSSH text (ECDSA on a NIST curve), validated as flwr's
    ``supernode register`` does; ``where`` names it in the one-line error."""
    if b"PRIVATE KEY" in data:
        raise CertificateError(f"{where} is a private key: ask the hospital for its public key (the .pub file)")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"{where}: not an OpenSSH public key (make one with: ssh-keygen -t ecdsa -b 384 -N '' -f KEY)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.lstrip("_").replace("PublicKey", "")
        raise CertificateError(f"{where}: an {kind} key; flwr needs ECDSA on a NIST curve (ssh-keygen -t ecdsa -b 384)")
    if not isinstance(key.curve, _NIST_CURVES):
        raise CertificateError(f"{where}: curve {key.curve.name} is not a NIST curve flwr accepts (use ssh-keygen -t ecdsa)")
    return NodeKey.from_public_key(key)
