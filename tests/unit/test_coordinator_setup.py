"""A coordinator's folder (config, certificates, admitted hospitals), its nginx config, its CLI's errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from federation.coordinator_setup import add_hospital, init_coordinator, load_coordinator, load_hospitals, remove_hospital
from federation.errors import CoordinatorError
from federation.pki import check_server_certificate
from federation.proxy import NGINX, nginx_command, write_nginx_config
from federation.superlink import SuperLinkTLS, superlink_command
from platform_api.cli import app

runner = CliRunner()


def _key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path


def test_init_writes_a_loadable_coordinator_and_refuses_to_overwrite(tmp_path: Path) -> None:
    config = init_coordinator(tmp_path / "c", "coord.example.org:8443", name="cardio", superlink_port=40123)
    loaded = load_coordinator(tmp_path / "c")
    assert (loaded.public_address, loaded.listen_host, loaded.superlink_address) == \
        ("coord.example.org:8443", "0.0.0.0", "127.0.0.1:40123")
    assert check_server_certificate(loaded.server_cert, loaded.ca_cert, loaded.public_address) is None
    assert check_server_certificate(loaded.server_cert, loaded.ca_cert, loaded.superlink_address) is None
    with pytest.raises(CoordinatorError, match="--force"):
        init_coordinator(tmp_path / "c", "coord.example.org:8443")
    add_hospital(config, "h1", _key(tmp_path / "h1.pub"))
    old_ca = loaded.ca_cert.read_bytes()
    init_coordinator(tmp_path / "c", "10.0.0.5", force=True, superlink_port=40123)
    renewed = load_coordinator(tmp_path / "c")
    assert renewed.ca_cert.read_bytes() != old_ca and renewed.listen_host == "10.0.0.5" and renewed.public_port == 9092
    assert [h.name for h in load_hospitals(renewed)] == ["h1"]  # admitted hospitals survive a new CA


def test_init_refuses_bad_addresses_and_clashing_ports(tmp_path: Path) -> None:
    with pytest.raises(CoordinatorError, match="port"):
        init_coordinator(tmp_path / "a", "coord:notaport")
    with pytest.raises(CoordinatorError, match="both 9093"):
        init_coordinator(tmp_path / "b", "coord:9093", superlink_port=9093)
    with pytest.raises(CoordinatorError, match="no coordinator here"):
        load_coordinator(tmp_path / "empty")


def test_admitted_hospitals_are_named_once_with_their_own_key(tmp_path: Path) -> None:
    config = init_coordinator(tmp_path / "c", "127.0.0.1:9443", superlink_port=40124)
    first = add_hospital(config, "hospital-01", _key(tmp_path / "a.pub"))
    assert first.fingerprint.startswith("SHA256:") and first.key.startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(CoordinatorError, match="already admitted"):
        add_hospital(config, "hospital-01", _key(tmp_path / "b.pub"))
    with pytest.raises(CoordinatorError, match="already admitted as hospital-01"):
        add_hospital(config, "hospital-02", tmp_path / "a.pub")
    with pytest.raises(CoordinatorError, match="letters, digits"):
        add_hospital(config, "bad name", tmp_path / "b.pub")
    add_hospital(config, "hospital-02", tmp_path / "b.pub")
    assert [h.name for h in load_hospitals(config)] == ["hospital-01", "hospital-02"]
    assert remove_hospital(config, "hospital-01").name == "hospital-01"
    with pytest.raises(CoordinatorError, match="admitted: hospital-02"):
        remove_hospital(config, "hospital-01")


def test_the_superlink_runs_with_tls_node_auth_and_a_database(tmp_path: Path) -> None:
    tls = SuperLinkTLS(certfile=tmp_path / "s.pem", keyfile=tmp_path / "s.key", ca_certfile=tmp_path / "ca.pem",
                       database=tmp_path / "link.db")
    command = superlink_command(port=40125, simulation=False, tls=tls)
    assert "--insecure" not in command and "--enable-supernode-auth" in command
    assert command[command.index("--database") + 1] == str(tmp_path / "link.db")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--insecure" in superlink_command(port=40125, simulation=True)


def test_nginx_passes_only_the_fleet_api(tmp_path: Path) -> None:
    config = init_coordinator(tmp_path / "c", "127.0.0.1:9443", superlink_port=40126)
    conf = write_nginx_config(config.run_dir, listen_host="127.0.0.1", listen_port=9443, superlink_port=40126,
                              cert=config.server_cert, key=config.server_key, ca_cert=config.ca_cert)
    text = conf.read_text()
    assert "location ~ ^/v1/fleet/[a-z0-9-]+$" in text and "proxy_pass https://127.0.0.1:40126$uri;" in text
    assert "location / { return 403; }" in text and "limit_except POST" in text and "daemon off;" in text
    assert "/v1/control" not in text and "/v1/runtime" not in text
    if not Path(NGINX).exists():
        if os.environ.get("BIOVERSE_REQUIRE_NGINX"):
            pytest.fail("nginx is missing and BIOVERSE_REQUIRE_NGINX is set")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    checked = subprocess.run([*nginx_command(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_the_cli_prints_one_line_for_a_bad_key(tmp_path: Path) -> None:
    assert runner.invoke(app, ["coordinator", "init", "--dir", str(tmp_path / "c"), "--public-address", "127.0.0.1:9443",
                               "--superlink-port", "40127"]).exit_code == 0
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ed")], check=True)
        result = runner.invoke(app, ["coordinator", "add-hospital", "h1", str(tmp_path / "ed.pub"), "--dir", str(tmp_path / "c")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and "ECDSA" in lines[0], result.output
    result = runner.invoke(app, ["coordinator", "hospitals", "--dir", str(tmp_path / "c")])
    assert result.exit_code == 0 and "no hospitals admitted yet" in result.output
    result = runner.invoke(app, ["coordinator", "start", "--dir", str(tmp_path / "nowhere")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "no coordinator here" in lines[0], result.output


def test_start_refuses_taken_ports_missing_nginx_and_a_foreign_certificate(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.coordinator_service import preflight
    from federation.errors import CertificateError
    from federation.pki import create_ca, issue_server_certificate
    from federation.processes import free_port

    config = init_coordinator(tmp_path / "c", f"127.0.0.1:{free_port()}", superlink_port=free_port())
    monkeypatch.setenv("BIOVERSE_NGINX", str(tmp_path / "no-nginx"))
    with pytest.raises(CoordinatorError, match="nginx is not installed"):
        preflight(config)
    monkeypatch.delenv("BIOVERSE_NGINX")
    if Path(NGINX).exists():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", config.superlink_port))
            taken.listen()
            with pytest.raises(CoordinatorError, match=f"port {config.superlink_port} on 127.0.0.1"):
                preflight(config)
    other = tmp_path / "other"
    create_ca("other", other / "ca.pem", other / "ca.key")
    issue_server_certificate(other / "ca.pem", other / "ca.key", ["127.0.0.1"], config.server_cert, config.server_key)
    with pytest.raises(CertificateError, match="not issued by the CA"):
        preflight(config)


def test_a_node_speaks_only_for_the_hospital_its_key_was_admitted_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.node_identity import NodeIdentities, identity_problem

    registered = {11: "hospital-01", 12: "hospital-02"}
    assert identity_problem(11, "hospital-01", registered) is None
    assert "admitted as hospital-02 but claims to be hospital-01" in (identity_problem(12, "hospital-01", registered) or "")
    assert "not among" in (identity_problem(13, "hospital-01", registered) or "")
    monkeypatch.delenv("BIOVERSE_COORDINATOR_DIR", raising=False)
    assert NodeIdentities().problem(13, "anyone") is None  # no coordinator (simulation): nothing to check
    config = init_coordinator(tmp_path / "c", "127.0.0.1:9443", superlink_port=40128)
    assert "not among" in (NodeIdentities(config.directory).problem(13, "anyone") or "")  # SuperLink down: nobody admitted
