"""A hospital's node folder: join's key pair, node config, site policy defaults and service files; the coordinator check."""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.coordinator_probe import check_coordinator
from federation.errors import CoordinatorCheckError, SiteConfigError
from federation.hospital_join import JoinRequest, join
from federation.node_config import NODE_CONFIG, load_node_config
from federation.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *,
          ca: bool, names: tuple[str, ...] = (), days: tuple[int, int] = (-1, 30)) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now + dt.timedelta(days=days[0]))
               .not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, another CA, and server certificates: good, expired, for another name, by the other CA."""
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, other = _cert("test CA", ca_key, None, ca=True), _cert("other CA", other_key, None, ca=True)
    files = {"ca": tmp_path / "ca.pem", "other_ca": tmp_path / "other.pem"}
    files["ca"].write_bytes(_pem(ca))
    files["other_ca"].write_bytes(_pem(other))
    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    leaves = {"good": _cert("coordinator", server_key, (ca.subject, ca_key), ca=False, names=("127.0.0.1", "localhost")),
              "expired": _cert("coordinator", server_key, (ca.subject, ca_key), ca=False, names=("127.0.0.1",), days=(-30, -1)),
              "other_name": _cert("coordinator", server_key, (ca.subject, ca_key), ca=False, names=("coordinator.example",)),
              "by_other_ca": _cert("coordinator", server_key, (other.subject, other_key), ca=False, names=("127.0.0.1",))}
    for label, cert in leaves.items():
        files[label] = tmp_path / f"{label}.pem"
        files[label].write_bytes(_pem(cert))
    files["server_key"] = tmp_path / "server.key"
    return files


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[str]:
    """A TLS server on loopback showing ``cert`` (handshakes only); yields its address."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(2)
                with contextlib.suppress(OSError):
                    tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_check_coordinator_accepts_its_ca_and_names_each_failure(pki: dict[str, Path]) -> None:
    with tls_server(pki["good"], pki["server_key"]) as address:
        info = check_coordinator(address, pki["ca"])
        assert "127.0.0.1" in info.names and info.subject == "CN=coordinator" and len(info.sha256) == 95
        with pytest.raises(CoordinatorCheckError, match="not signed by the CA in .*other.pem"):
            check_coordinator(address, pki["other_ca"])
    with tls_server(pki["expired"], pki["server_key"]) as address, pytest.raises(CoordinatorCheckError, match="expired on"):
        check_coordinator(address, pki["ca"])
    with tls_server(pki["other_name"], pki["server_key"]) as address, \
            pytest.raises(CoordinatorCheckError, match="is for coordinator.example, not 127.0.0.1"):
        check_coordinator(address, pki["ca"])
    with pytest.raises(CoordinatorCheckError, match="cannot reach the coordinator"):
        check_coordinator(f"127.0.0.1:{free_port()}", pki["ca"])
    with pytest.raises(CoordinatorCheckError, match="not a CA's"):
        check_coordinator(f"127.0.0.1:{free_port()}", pki["good"])


def _request(tmp_path: Path, pki: dict[str, Path], **changes: object) -> JoinRequest:
    data = tmp_path / "site.csv"
    data.write_text("a,b\n1,2\n")
    fields: dict[str, object] = {"coordinator": "coordinator.example:9092", "ca_cert": pki["ca"], "hospital_id": "st-mary",
                                 "data_path": data, "privacy_budget": 8.0, "directory": tmp_path / "node"}
    return JoinRequest(**{**fields, **changes})  # type: ignore[arg-type]


def test_join_writes_a_node_folder_flower_accepts(tmp_path: Path, pki: dict[str, Path]) -> None:
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    joined = join(_request(tmp_path, pki))
    config = load_node_config(tmp_path / "node")
    assert config == joined.config and joined.new_key
    assert config.policy.total_budget == 8.0 and config.policy.max_epsilon_per_run == 5.0
    assert config.policy.allow_images is False and config.policy.min_cell == 10 and config.policy.require_dp
    assert (tmp_path / "node" / "ca.pem").read_bytes() == pki["ca"].read_bytes()
    private = serialization.load_ssh_private_key(config.private_key.read_bytes(), None)  # as flower-supernode loads it
    public = serialization.load_ssh_public_key(config.public_key.read_bytes())  # as flwr supernode register does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert uses_nist_ec_curve(public) and private.public_key().public_numbers() == public.public_numbers()
    assert config.private_key.stat().st_mode & 0o077 == 0
    assert joined.register_line == "bioverse coordinator add-hospital st-mary st-mary.pub"
    node = config.node_config(tmp_path / "node" / NODE_CONFIG)
    assert node["policy-file"] == str(tmp_path / "node" / NODE_CONFIG) and node["privacy-budget"] == 8.0
    key = config.private_key.read_bytes()
    again = join(_request(tmp_path, pki, privacy_budget=4.0))
    assert not again.new_key and config.private_key.read_bytes() == key  # a registered key is kept
    assert load_node_config(tmp_path / "node").policy.max_epsilon_per_run == 4.0


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"data_path": Path("/nonexistent/site.csv")}, SiteConfigError, "no such data file"),
    ({"privacy_budget": float("nan")}, SiteConfigError, "positive, finite"),
    ({"privacy_budget": -1.0}, SiteConfigError, "positive, finite"),
    ({"coordinator": "coordinator.example"}, SiteConfigError, "not HOST:PORT"),
    ({"hospital_id": "St Mary's"}, SiteConfigError, "hospital id"),
    ({"ca_cert": Path("/nonexistent/ca.pem")}, CoordinatorCheckError, "CA certificate"),
    ({"ca_cert": "GOOD"}, CoordinatorCheckError, "not a CA's"),
    ({"ca_cert": "GARBAGE"}, CoordinatorCheckError, "not a PEM certificate"),
])
def test_join_refuses_bad_input_in_one_line(tmp_path: Path, pki: dict[str, Path], changes: dict[str, object],
                                            error: type[Exception], match: str) -> None:
    if changes.get("ca_cert") == "GOOD":
        changes = {"ca_cert": pki["good"]}
    elif changes.get("ca_cert") == "GARBAGE":
        (tmp_path / "garbage.pem").write_text("not a certificate")
        changes = {"ca_cert": tmp_path / "garbage.pem"}
    with pytest.raises(error, match=match) as caught:
        join(_request(tmp_path, pki, **changes))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "node" / NODE_CONFIG).exists()


def test_compose_file_follows_the_compose_spec(tmp_path: Path, pki: dict[str, Path]) -> None:
    joined = join(_request(tmp_path, pki))
    schema = json.loads((ROOT / "deploy" / "hospital" / "compose-spec.json").read_text())
    document = yaml.safe_load(joined.compose_file.read_text())
    jsonschema.validate(document, schema)
    (service,) = document["services"].values()
    mounts = {m["source"]: m for m in service["volumes"]}
    assert mounts[str(joined.config.data_path)]["read_only"] is True
    assert service["command"][-2:] == ["--dir", str(tmp_path / "node")]
    broken = {**document, "services": {"x": {**service, "restart": ["no"]}}}
    with pytest.raises(jsonschema.ValidationError):  # the schema does check
        jsonschema.validate(broken, schema)


def test_systemd_unit_is_valid(tmp_path: Path, pki: dict[str, Path]) -> None:
    joined = join(_request(tmp_path, pki))
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(joined.systemd_unit.read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert unit["Service"]["ExecStart"].endswith(f"hospital start --dir {tmp_path / 'node'}")
    assert Path(unit["Service"]["ExecStart"].split()[0]).exists()
    assert unit["Service"]["Restart"] == "always" and unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Service"]["ProtectSystem"] == "strict"  # so Flower's own files must live in the writable node folder
    assert unit["Service"]["ReadWritePaths"] == str(tmp_path / "node")
    assert f"FLWR_HOME={tmp_path / 'node' / 'flwr-home'}" in joined.systemd_unit.read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze:  # where systemd is installed: its own check (warnings about this machine's units aside)
        done = subprocess.run([analyze, "verify", str(joined.systemd_unit)], capture_output=True, text=True, timeout=60)
        problems = [line for line in done.stderr.splitlines() if joined.systemd_unit.name in line]
        assert done.returncode == 0 and not problems, done.stderr


def test_check_tells_whether_the_policy_allows_a_spec(tmp_path: Path, pki: dict[str, Path], hospital_files: list[Path]) -> None:
    from typer.testing import CliRunner

    from platform_api.cli import app
    from tests.conftest import spec_dict

    join(_request(tmp_path, pki, data_path=hospital_files[0], allowed_model_kinds=("logistic",)))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec_dict(hospital_files)))
    (tmp_path / "mlp.yaml").write_text(yaml.safe_dump(spec_dict(hospital_files, model={"kind": "mlp"})))
    runner = CliRunner()
    allowed = runner.invoke(app, ["hospital", "check", str(tmp_path / "ok.yaml"), "--dir", str(tmp_path / "node")])
    assert allowed.exit_code == 0 and "st-mary's policy allows test-cardiac (logistic, fedavg, epsilon 4)" in allowed.output
    refused = runner.invoke(app, ["hospital", "check", str(tmp_path / "mlp.yaml"), "--dir", str(tmp_path / "node")])
    assert refused.exit_code == 1 and "st-mary's policy refuses model kind 'mlp' (policy allows logistic)" in refused.output
