"""``bioverse hospital join``: a hospital's node folder: key pair, the CA it trusts, node config with site policy, service files."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.coordinator_probe import load_ca
from federation.errors import SiteConfigError
from federation.node_config import NODE_CONFIG, NodeConfig, parse_address, save_node_config
from federation.site_policy import SitePolicy

__all__ = ["JoinRequest", "Joined", "compose_service", "join", "make_key_pair", "systemd_unit"]


@dataclass(frozen=True)
class JoinRequest:
    """What a hospital's IT gives ``join``: the coordinator, its CA, who the hospital is, its data and policy."""

    coordinator: str
    ca_cert: Path
    hospital_id: str
    data_path: Path
    privacy_budget: float
    directory: Path
    max_epsilon_per_run: float | None = None
    allowed_model_kinds: tuple[str, ...] | None = None
    allowed_strategies: tuple[str, ...] | None = None
    min_cell: int = 10
    allow_images: bool | None = None
    runtime_port: int = 9094


@dataclass(frozen=True)
class Joined:
    """What ``join`` wrote: the node config, the public key to send, the service files."""

    config: NodeConfig
    node_config: Path
    public_key: Path
    systemd_unit: Path
    compose_file: Path
    new_key: bool

    @property
    def register_line(self) -> str:
        """The one command the coordinator's operator runs with the key the hospital sends."""
        return f"bioverse coordinator add-hospital {self.config.hospital_id} {self.public_key.name}"


def make_key_pair(private: Path, public: Path, comment: str) -> bool:
    """An ECDSA P-384 key pair in OpenSSH format (what Flower's node authentication takes);
    an existing pair is kept (its public key may be registered already). Returns whether
    a new pair was made."""
    if private.exists() and public.exists():
        return False
    key = ec.generate_private_key(ec.SECP384R1())
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                       + f" {comment}\n".encode())
    return True


def _bioverse() -> str:
    candidate = Path(sys.executable).parent / "bioverse"
    return str(candidate) if candidate.exists() else (shutil.which("bioverse") or "bioverse")


def systemd_unit(config: NodeConfig, directory: Path) -> str:
    """A systemd service running ``bioverse hospital start`` for this node folder (restarts
    whenever it exits: a SuperNode refused by a restarted SuperLink exits 0; read-only system, writes only to its folder, ledger and audit log)."""
    writable = sorted({str(directory), str(config.ledger_path.parent), str(config.audit_log.parent)})
    return "\n".join([
        "[Unit]",
        f"Description=BioVerse hospital node {config.hospital_id} (Flower SuperNode)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_bioverse()} hospital start --dir {directory}",
        f"WorkingDirectory={directory}",
        f'Environment=PYTHONUNBUFFERED=1 "FLWR_HOME={directory / "flwr-home"}"',  # Flower installs its apps there
        "Restart=always",  # also after a clean exit: a SuperNode a restarted SuperLink refuses exits 0
        "RestartSec=30",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(writable)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def compose_service(config: NodeConfig, directory: Path) -> str:
    """A compose file with one service running the node from an image with BioVerse
    installed (``BIOVERSE_IMAGE``); folders are mounted at the same paths, so the node
    config holds inside the container too, the data read-only."""
    data = config.data_path
    mounts = [{"type": "bind", "source": str(directory), "target": str(directory)},
              {"type": "bind", "source": str(data), "target": str(data), "read_only": True}]
    for folder in sorted({config.ledger_path.parent, config.audit_log.parent} - {directory}):
        mounts.append({"type": "bind", "source": str(folder), "target": str(folder)})
    service = {"image": "${BIOVERSE_IMAGE:-bioverse:latest}",
               "command": ["bioverse", "hospital", "start", "--dir", str(directory)],
               "restart": "unless-stopped", "volumes": mounts,
               "environment": {"PYTHONUNBUFFERED": "1", "FLWR_HOME": str(directory / "flwr-home")}}
    name = "bioverse-" + re.sub(r"[^a-z0-9_-]", "-", config.hospital_id.lower())
    return yaml.safe_dump({"services": {name: service}}, sort_keys=False)


def _policy(request: JoinRequest) -> SitePolicy:
    per_run = request.max_epsilon_per_run if request.max_epsilon_per_run is not None else min(5.0, request.privacy_budget)
    images = request.allow_images if request.allow_images is not None else request.data_path.is_dir()
    try:
        return SitePolicy(total_budget=request.privacy_budget, max_epsilon_per_run=per_run,
                          allowed_model_kinds=request.allowed_model_kinds, allowed_strategies=request.allowed_strategies,
                          min_cell=request.min_cell, allow_images=images)
    except ValueError as err:
        raise SiteConfigError(f"site policy: {err}".splitlines()[0] + f" ({str(err).splitlines()[-1].strip()})") from err


def join(request: JoinRequest) -> Joined:
    """Write a hospital's node folder: key pair (kept if there), the CA certificate, the node
    config with its site policy, a systemd unit and a compose service.

    Raises:
        SiteConfigError: the hospital id, address, data, budget or policy is unusable.
        CoordinatorCheckError: the CA certificate is unreadable or not a CA's.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", request.hospital_id):
        raise SiteConfigError(f"hospital id {request.hospital_id!r}: use letters, digits, '.', '_' or '-' (64 at most)")
    parse_address(request.coordinator)
    if not (math.isfinite(request.privacy_budget) and request.privacy_budget > 0):
        raise SiteConfigError(f"privacy budget must be a positive, finite epsilon, not {request.privacy_budget!r}")
    data = request.data_path.expanduser().resolve()
    if not data.exists():
        raise SiteConfigError(f"{request.data_path}: no such data file or folder")
    if not os.access(data, os.R_OK):
        raise SiteConfigError(f"{data}: not readable by this user")
    load_ca(request.ca_cert)
    directory = request.directory.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys"
    private, public = keys / request.hospital_id, keys / f"{request.hospital_id}.pub"
    new_key = make_key_pair(private, public, f"bioverse-{request.hospital_id}")
    ca = directory / "ca.pem"
    if request.ca_cert.resolve() != ca:
        shutil.copyfile(request.ca_cert, ca)
    config = NodeConfig(hospital_id=request.hospital_id, coordinator=request.coordinator, ca_cert=ca,
                        private_key=private, public_key=public, data_path=data, ledger_path=directory / "ledger.json",
                        audit_log=directory / "audit.jsonl", runtime_port=request.runtime_port,
                        policy=_policy(request))
    save_node_config(config, directory / NODE_CONFIG)
    unit = directory / f"bioverse-hospital-{request.hospital_id}.service"
    unit.write_text(systemd_unit(config, directory))
    compose = directory / "compose.yaml"
    compose.write_text(compose_service(config, directory))
    return Joined(config, directory / NODE_CONFIG, public, unit, compose, new_key)
