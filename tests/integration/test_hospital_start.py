"""``bioverse hospital start`` against a SuperLink with TLS and node authentication: each failure is one line, a registered key connects."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.control_api import register_node
from federation.pki import create_ca, issue_server_certificate, load_node_public_key
from federation.processes import free_port, stop, wait_for_port
from federation.superlink import SuperLinkTLS, start_superlink

pytestmark = pytest.mark.integration
BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def _bioverse(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIOVERSE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stdout[-2000:] + done.stderr
    return lines[0]


def test_start_names_what_to_fix_then_connects_once_registered(hospital_files: list[Path], tmp_path: Path,
                                                                isolated_home: Path) -> None:
    create_ca("test", tmp_path / "ca.pem", tmp_path / "ca.key")
    create_ca("other", tmp_path / "other-ca.pem", tmp_path / "other-ca.key")
    issue_server_certificate(tmp_path / "ca.pem", tmp_path / "ca.key", ["127.0.0.1"], tmp_path / "server.pem",
                             tmp_path / "server.key")
    port, node = free_port(), tmp_path / "node"  # expired and mismatched certificates: tests/unit/test_hospital_join.py

    def join(ca: str, coordinator: str = f"127.0.0.1:{port}") -> None:
        done = _bioverse("hospital", "join", "--coordinator", coordinator, "--ca-cert", str(tmp_path / ca),
                         "--hospital-id", "st-mary", "--data-path", str(hospital_files[0]), "--privacy-budget", "6",
                         "--dir", str(node), "--port", str(free_port()))
        assert done.returncode == 0, done.stderr

    join("ca.pem")
    assert "cannot reach the coordinator at 127.0.0.1:" in _one_line(_bioverse("hospital", "start", "--dir", str(node)))
    tls = SuperLinkTLS(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem")
    link = start_superlink(port=port, log_file=tmp_path / "superlink.log", simulation=False, tls=tls)
    supernode: subprocess.Popen | None = None
    try:
        wait_for_port(port, 60, link)
        join("other-ca.pem")
        assert "is not signed by the CA in" in _one_line(_bioverse("hospital", "start", "--dir", str(node)))
        join("ca.pem")
        line = _one_line(_bioverse("hospital", "start", "--dir", str(node), timeout=180))
        assert line == (f"error: the coordinator has not registered this hospital's key: send it {node / 'keys' / 'st-mary.pub'} "
                        "(its operator runs: bioverse coordinator add-hospital st-mary st-mary.pub)")
        register_node(f"127.0.0.1:{port}", tmp_path / "ca.pem", load_node_public_key(node / "keys" / "st-mary.pub").pem,
                      "st-mary")
        supernode = subprocess.Popen([BIOVERSE, "hospital", "start", "--dir", str(node)], stdout=open(tmp_path / "node.log", "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline, status = time.monotonic() + 120, ""
        while time.monotonic() < deadline and "activate-node HTTP/1.1\" 200" not in (tmp_path / "superlink.log").read_text():
            assert supernode.poll() is None, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(1)
        status = _bioverse("hospital", "status", "--dir", str(node)).stdout
    finally:
        stop(supernode)
        stop(link)
    assert "connected: TLS to 127.0.0.1:" in status and "supernode: running" in status, status
    assert "127.0.0.1" in status.split("names ")[1].split("  ")[0] and "0.000 spent, 6.000 left of 6" in status
    assert "no run has touched this hospital's data yet" in status
    assert not (node / "supernode.pid").exists()  # the SuperNode stopped with its wrapper
