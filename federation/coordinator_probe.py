"""A hospital's check of its coordinator: reachable, and its TLS certificate signed by the CA it was given, valid, for the address dialled."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from federation.errors import CoordinatorCheckError
from federation.node_config import parse_address

__all__ = ["CertificateInfo", "check_coordinator", "describe_certificate", "fetch_certificate", "load_ca"]

#: OpenSSL's verify codes a hospital can act on (X509_V_ERR_*).
_EXPIRED, _NOT_YET_VALID, _HOSTNAME, _IP = 10, 9, 62, 64
_UNKNOWN_ISSUER = (2, 18, 19, 20, 21)


@dataclass(frozen=True)
class CertificateInfo:
    """What a hospital wants to see of its coordinator's certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: dt.datetime
    sha256: str


def load_ca(path: Path) -> list[x509.Certificate]:
    """The CA certificate(s) in a PEM file.

    Raises:
        CoordinatorCheckError: unreadable, not PEM certificates, or not a CA.
    """
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as err:
        raise CoordinatorCheckError(f"CA certificate {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise CoordinatorCheckError(f"CA certificate {path} is not a PEM certificate (ask the coordinator for its ca.pem)") from err
    for cert in certificates:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = cert.issuer == cert.subject  # an old self-signed root without the extension
        if not is_ca:
            raise CoordinatorCheckError(f"{path} holds a certificate of {cert.subject.rfc4514_string()}, not a CA's "
                                        "(ask the coordinator for its CA certificate, ca.pem)")
    return certificates


def describe_certificate(der: bytes) -> CertificateInfo:
    """Subject, issuer, names (SANs), expiry and sha256 fingerprint of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = (*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), names,
                           cert.not_valid_after_utc, cert.fingerprint(hashes.SHA256()).hex(":"))


def _connect(address: str, timeout: float) -> socket.socket:
    host, port = parse_address(address)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise CoordinatorCheckError(f"cannot reach the coordinator at {address}: {err.strerror or err} "
                                    "(check the address, that it runs, and the firewall between you)") from err


def fetch_certificate(address: str, timeout: float = 5.0) -> bytes:
    """The certificate the coordinator shows, unverified (DER), to describe it even when it fails the check.

    Raises:
        CoordinatorCheckError: unreachable, or no TLS there.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, _ = parse_address(address)
    with _connect(address, timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return tls.getpeercert(binary_form=True) or b""
        except (ssl.SSLError, OSError) as err:
            raise CoordinatorCheckError(f"{address} does not speak TLS: {err}") from err


def _verify_failure(address: str, ca: Path, err: ssl.SSLCertVerificationError, shown: CertificateInfo | None) -> str:
    names = ", ".join(shown.names) if shown and shown.names else "none"
    code = err.verify_code
    if code == _EXPIRED:
        when = f" on {shown.not_after:%Y-%m-%d}" if shown else ""
        return f"the coordinator's certificate expired{when}: ask its operator to renew it"
    if code == _NOT_YET_VALID:
        return "the coordinator's certificate is not valid yet: check this machine's clock and the coordinator's"
    if code in (_HOSTNAME, _IP):
        return (f"the coordinator's certificate is for {names}, not {parse_address(address)[0]}: dial one of its names "
                "(node.toml coordinator) or ask its operator for a certificate with this name")
    if code in _UNKNOWN_ISSUER:
        issuer = f" (it was issued by {shown.issuer})" if shown else ""
        return f"the coordinator's certificate is not signed by the CA in {ca}{issuer}: ask the coordinator for its ca.pem"
    return f"the coordinator's certificate is refused: {err.verify_message} (ask its operator)"


def check_coordinator(address: str, ca: Path, timeout: float = 5.0) -> CertificateInfo:
    """Connect to the coordinator with TLS, trusting only ``ca``, and check its certificate
    (chain, validity, name = the address dialled).

    Raises:
        CoordinatorCheckError: one line saying what to fix (unreachable, wrong CA, expired,
            name mismatch, no TLS).
    """
    load_ca(ca)
    context = ssl.create_default_context(cafile=str(ca))
    host, _ = parse_address(address)
    with _connect(address, timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return describe_certificate(tls.getpeercert(binary_form=True) or b"")
        except ssl.SSLCertVerificationError as err:
            try:
                shown = describe_certificate(fetch_certificate(address, timeout))
            except (CoordinatorCheckError, ValueError):
                shown = None
            raise CoordinatorCheckError(_verify_failure(address, ca, err, shown)) from err
        except (ssl.SSLError, OSError) as err:
            raise CoordinatorCheckError(f"TLS handshake with the coordinator at {address} failed: {err} "
                                        "(is it the Fleet address, with TLS on?)") from err
