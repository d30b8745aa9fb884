"""``bioverse hospital start`` and ``status``: a hospital node's preflight, its SuperNode, and what it can see of its federation."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.coordinator_probe import CertificateInfo, check_coordinator, describe_certificate, fetch_certificate, load_ca
from federation.errors import CoordinatorCheckError, FederationError, SiteConfigError
from federation.ledger import PrivacyLedger
from federation.node_config import NodeConfig, load_node_config
from federation.site_audit import AuditProblem, read_rows, verify_log
from federation.supernode import run_supernode, secure_supernode_command, supernode_command

__all__ = ["NodeStatus", "RunSeen", "node_status", "preflight", "spent_on_data", "start_node"]

PID_FILE = "supernode.pid"


def preflight(config: NodeConfig, *, tls: bool = True) -> CertificateInfo | None:
    """Check what a hospital's node needs before it starts: its data readable, its key, the
    CA certificate, and (with ``tls``) the coordinator reachable with a certificate that CA
    signed, valid now, for the address dialled.

    Raises:
        SiteConfigError: the data or key is unusable.
        CoordinatorCheckError: the CA or the coordinator fails (one line: what to fix).
    """
    if not config.data_path.exists():
        raise SiteConfigError(f"{config.data_path}: no such data file or folder (node.toml data_path)")
    if not os.access(config.data_path, os.R_OK):
        raise SiteConfigError(f"{config.data_path}: not readable by this user (node.toml data_path)")
    if not tls:
        return None
    if not os.access(config.private_key, os.R_OK):
        raise SiteConfigError(f"{config.private_key}: the node key is missing or unreadable (run 'bioverse hospital join')")
    return check_coordinator(config.coordinator, config.ca_cert)


def start_node(directory: Path, *, insecure: bool = False, on_start: Callable[[int], None] | None = None) -> None:
    """Preflight, then run the node's SuperNode in the foreground (TLS, trusting only the
    node's CA, every request signed with its key; ``insecure``: plain on loopback, for
    development) until it is stopped.

    Raises:
        FederationError: a preflight check or the SuperNode failed (one line).
    """
    directory = directory.expanduser().resolve()
    config = load_node_config(directory)
    preflight(config, tls=not insecure)
    node = config.node_config(directory / "node.toml")
    if insecure:
        command = supernode_command(superlink=config.coordinator, port=config.runtime_port, node_config=node)
    else:
        command = secure_supernode_command(superlink=config.coordinator, port=config.runtime_port, node_config=node,
                                           root_certificates=config.ca_cert, private_key=config.private_key)
    names = {"public_key": str(config.public_key), "public_key_name": config.public_key.name,
             "hospital_id": config.hospital_id, "private_key": str(config.private_key), "ca_cert": str(config.ca_cert)}
    run_supernode(command, names, pid_file=directory / PID_FILE, on_start=on_start)


@dataclass
class RunSeen:
    """One run as the hospital's audit log saw it."""

    run: str
    launcher: str
    spec: str
    first: str
    last: str
    requests: int = 0
    refused: int = 0
    epsilon: float = 0.0
    reasons: list[str] = field(default_factory=list)


@dataclass
class NodeStatus:
    """What ``bioverse hospital status`` shows."""

    config: NodeConfig
    connected: bool
    connection: str
    certificate: CertificateInfo | None
    supernode: str
    runs: list[RunSeen]
    spent: float
    audit_rows: int
    audit_problems: list[AuditProblem]

    @property
    def left(self) -> float:
        return self.config.policy.total_budget - self.spent


def _supernode_state(directory: Path, config: NodeConfig) -> str:
    try:
        pid = int((directory / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return "not running"
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", config.runtime_port), timeout=1):
        return f"running (pid {pid}, runtime API on 127.0.0.1:{config.runtime_port})"
    return f"running (pid {pid}), its runtime API on 127.0.0.1:{config.runtime_port} does not answer"


def _runs(rows: list[dict[str, Any]]) -> list[RunSeen]:
    runs: dict[str, RunSeen] = {}
    for row in rows:
        key = str(row.get("run") or "?")
        seen = runs.setdefault(key, RunSeen(key, str(row.get("launcher", "")), str(row.get("spec", ""))[:12],
                                            str(row.get("at", "")), str(row.get("at", ""))))
        seen.last = str(row.get("at", seen.last))
        seen.requests += 1
        seen.epsilon += float(row.get("epsilon", 0.0) or 0.0)
        if row.get("outcome") != "accepted":
            seen.refused += 1
            if row.get("reason") and row["reason"] not in seen.reasons:
                seen.reasons.append(str(row["reason"]))
    return list(runs.values())


def spent_on_data(config: NodeConfig) -> float:
    """Epsilon the ledger holds against this node's data (stored charges, summed)."""
    from training.fingerprint import dataset_fingerprint

    if not config.ledger_path.exists():
        return 0.0
    try:
        dataset = config.dataset_id or dataset_fingerprint(config.data_path)
    except (OSError, ValueError):
        dataset = None  # the conservative view: every charge at this hospital
    return sum(e.epsilon for e in PrivacyLedger(config.ledger_path, config.hospital_id, dataset).entries())


def node_status(directory: Path) -> NodeStatus:
    """The node's connection to its coordinator (TLS handshake), the certificate it shows,
    its SuperNode, the runs its audit log recorded and its budget (from its ledger).

    Raises:
        SiteConfigError: no usable node config in ``directory``.
    """
    directory = directory.expanduser().resolve()
    config = load_node_config(directory)
    certificate: CertificateInfo | None = None
    try:
        certificate = check_coordinator(config.coordinator, config.ca_cert)
        connected, connection = True, f"TLS to {config.coordinator}, certificate signed by {config.ca_cert.name}"
    except CoordinatorCheckError as err:
        connected, connection = False, str(err)
        with contextlib.suppress(FederationError, ValueError):
            load_ca(config.ca_cert)
            certificate = describe_certificate(fetch_certificate(config.coordinator))
    count, problems = verify_log(config.audit_log) if config.audit_log.exists() else (0, [])
    return NodeStatus(config, connected, connection, certificate, _supernode_state(directory, config),
                      _runs(read_rows(config.audit_log)), spent_on_data(config), count, problems)
