"""A hospital node's config file (``node.toml``): coordinator, trust, keys, data, ledger, audit log, site policy."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federation.errors import SiteConfigError
from federation.site_policy import SitePolicy

__all__ = ["NODE_CONFIG", "NodeConfig", "load_node_config", "parse_address", "save_node_config"]

#: The node config's file name in a hospital's node folder.
NODE_CONFIG = "node.toml"
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port).

    Raises:
        SiteConfigError: not a host and a port in 1-65535.
    """
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", address.strip())
    port = int(found.group(2) or found.group(4)) if found else 0
    if not found or not 0 < port < 65536:
        raise SiteConfigError(f"coordinator address {address!r} is not HOST:PORT")
    return found.group(1) or found.group(3), port


class NodeConfig(BaseModel):
    """What ``bioverse hospital start`` needs, as ``bioverse hospital join`` wrote it (absolute paths).

    Attributes:
        hospital_id: The hospital's id, as experiment specs list it.
        coordinator: The coordinator's Fleet address, ``HOST:PORT`` (its certificate's name).
        ca_cert: The coordinator's CA certificate (PEM) the hospital trusts.
        private_key / public_key: The node's ECDSA key pair (OpenSSH); the coordinator
            registers the public key.
        data_path: The hospital's data (file or image folder).
        ledger_path: Its privacy ledger (JSON).
        audit_log: Its hash-chained audit log (JSON lines).
        dataset_id: Names the dataset its budget protects (default: the data's fingerprint).
        statistics: ``dp`` (answer the statistics round noised and charged) or ``refuse``.
        runtime_port: The SuperNode's local runtime API port (loopback).
        policy: What runs may do with its data (:class:`~federation.site_policy.SitePolicy`).
    """

    model_config = ConfigDict(extra="forbid")

    hospital_id: str = Field(pattern=_ID)
    coordinator: str
    ca_cert: Path
    private_key: Path
    public_key: Path
    data_path: Path
    ledger_path: Path
    audit_log: Path
    dataset_id: str | None = None
    statistics: str = Field(default="dp", pattern="^(dp|refuse)$")
    runtime_port: int = Field(default=9094, ge=1, le=65535)
    policy: SitePolicy

    @field_validator("coordinator")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            parse_address(value)
        except SiteConfigError as err:
            raise ValueError(str(err)) from err
        return value.strip()

    def node_config(self, policy_file: Path) -> dict[str, str | float | int]:
        """The SuperNode's ``--node-config`` values the ClientApp reads (:func:`federation.site.resolve_site`)."""
        values: dict[str, str | float | int] = {
            "hospital-id": self.hospital_id, "data-path": str(self.data_path), "privacy-budget": self.policy.total_budget,
            "ledger-path": str(self.ledger_path), "audit-log": str(self.audit_log), "statistics": self.statistics,
            "policy-file": str(policy_file)}
        if self.dataset_id:
            values["dataset-id"] = self.dataset_id
        return values


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_node_config(config: NodeConfig, path: Path) -> None:
    """Write the node config as TOML (the policy in its ``[policy]`` table)."""
    path.write_text(tomli_w.dumps(_plain(config.model_dump())))  # type: ignore[arg-type]


def load_node_config(directory: Path) -> NodeConfig:
    """The node config in a hospital's node folder.

    Raises:
        SiteConfigError: missing, not TOML, or a field invalid (the first one named).
    """
    path = directory / NODE_CONFIG
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise SiteConfigError(f"{path}: no node config (run 'bioverse hospital join' first, or pass --dir)") from err
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SiteConfigError(f"{path} is unreadable: {err}") from err
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise SiteConfigError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from err
