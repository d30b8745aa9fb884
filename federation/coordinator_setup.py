"""A coordinator's folder: its config, PKI files and the hospitals it admits (``bioverse coordinator``)."""

from __future__ import annotations

import datetime
import ipaddress
import re
import tomllib
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.errors import CertificateError, CoordinatorError
from federation.pki import create_ca, issue_server_certificate, load_node_public_key, split_address

__all__ = [
    "COORDINATOR_DIR_ENV",
    "DEFAULT_PUBLIC_PORT",
    "DEFAULT_SUPERLINK_PORT",
    "AdmittedHospital",
    "CoordinatorConfig",
    "add_hospital",
    "init_coordinator",
    "load_coordinator",
    "load_hospitals",
    "remove_hospital",
]

#: Set by ``coordinator start`` in the SuperLink's environment, which its ServerApp processes
#: inherit: the folder whose admitted hospitals name the nodes (:mod:`federation.node_identity`).
COORDINATOR_DIR_ENV = "BIOVERSE_COORDINATOR_DIR"
CONFIG_FILE = "coordinator.toml"
HOSPITALS_FILE = "hospitals.toml"
#: Port hospitals dial (nginx) unless the public address names one.
DEFAULT_PUBLIC_PORT = 9092
#: Loopback port of the SuperLink (all its APIs) unless ``init`` is given one.
DEFAULT_SUPERLINK_PORT = 9093
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CoordinatorConfig(BaseModel):
    """``coordinator.toml``: where the coordinator listens; file paths follow from its folder.

    Attributes:
        name: The federation's name (in the CA's subject).
        public_host: Host name or IP address hospitals dial (a SAN of the certificate).
        public_port: Port hospitals dial (nginx's).
        listen_host: Address nginx binds: the public host when it is an IP address, else all.
        superlink_port: The SuperLink's port on 127.0.0.1 (Fleet, Control, Runtime APIs).
        created_at: When ``init`` ran (UTC, ISO 8601).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    public_host: str = Field(min_length=1)
    public_port: int = Field(gt=0, lt=65536)
    listen_host: str = Field(min_length=1)
    superlink_port: int = Field(gt=0, lt=65536)
    created_at: str
    directory: Path = Field(default=Path("."), exclude=True)

    @property
    def public_address(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"{host}:{self.public_port}"

    @property
    def superlink_address(self) -> str:
        """Where the launcher and the proxy reach the SuperLink (loopback, TLS)."""
        return f"127.0.0.1:{self.superlink_port}"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "pki" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "pki" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "pki" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "pki" / "server.key"

    @property
    def database(self) -> Path:
        return self.directory / "superlink.db"

    @property
    def hospitals_file(self) -> Path:
        return self.directory / HOSPITALS_FILE

    @property
    def run_dir(self) -> Path:
        """Logs, nginx's config, pid and temp files, the local Flower home."""
        return self.directory / "run"


class AdmittedHospital(BaseModel):
    """One hospital the coordinator admits: its name and node key (OpenSSH line)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    key: str
    fingerprint: str
    added_at: str


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def init_coordinator(directory: Path, public_address: str, *, name: str = "bioverse", force: bool = False,
                     superlink_port: int = DEFAULT_SUPERLINK_PORT, listen_host: str | None = None) -> CoordinatorConfig:
    """Create a coordinator's folder: CA, server certificate for ``public_address`` (and
    loopback), config. An existing coordinator is kept unless ``force`` (then its CA and
    certificate are replaced; admitted hospitals are kept)."""
    directory = directory.resolve()
    if (directory / CONFIG_FILE).exists() and not force:
        raise CoordinatorError(f"{directory} already holds a coordinator; pass --force to replace its CA and certificate")
    try:
        host, port = split_address(public_address, DEFAULT_PUBLIC_PORT)
    except CertificateError as e:
        raise CoordinatorError(str(e)) from None
    if not _NAME.match(name):
        raise CoordinatorError(f"--name {name!r}: letters, digits, '.', '_' or '-' only (at most 64)")
    if port == superlink_port:
        raise CoordinatorError(f"the public port and the SuperLink's loopback port are both {port}: choose another")
    if listen_host is None:
        try:
            ipaddress.ip_address(host)
            listen_host = host
        except ValueError:
            listen_host = "0.0.0.0"  # noqa: S104 - a DNS name: nginx listens on every address
    config = CoordinatorConfig(name=name, public_host=host, public_port=port, listen_host=listen_host,
                               superlink_port=superlink_port, created_at=_utc_now(), directory=directory)
    directory.mkdir(parents=True, exist_ok=True)
    create_ca(name, config.ca_cert, config.ca_key)
    issue_server_certificate(config.ca_cert, config.ca_key, [host], config.server_cert, config.server_key)
    (directory / CONFIG_FILE).write_text(tomli_w.dumps(config.model_dump(mode="json")))
    if not config.hospitals_file.exists():
        _save_hospitals(config, [])
    return config


def load_coordinator(directory: Path) -> CoordinatorConfig:
    """The coordinator in ``directory`` (made by :func:`init_coordinator`)."""
    directory = directory.resolve()
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CoordinatorError(f"{directory}: no coordinator here (run: bioverse coordinator init --dir {directory} ...)")
    try:
        config = CoordinatorConfig.model_validate({**tomllib.loads(path.read_text()), "directory": directory})
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise CoordinatorError(f"{path}: unreadable config ({str(e).splitlines()[0]})") from None
    for needed in (config.ca_cert, config.server_cert, config.server_key):
        if not needed.is_file():
            raise CoordinatorError(f"{needed} is missing: re-create the certificates with bioverse coordinator init --force")
    return config


def load_hospitals(config: CoordinatorConfig) -> list[AdmittedHospital]:
    """The admitted hospitals, in the order they were added."""
    if not config.hospitals_file.exists():
        return []
    try:
        table = tomllib.loads(config.hospitals_file.read_text()).get("hospitals", {})
        return [AdmittedHospital.model_validate({"name": name, **entry}) for name, entry in table.items()]
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as e:
        raise CoordinatorError(f"{config.hospitals_file}: unreadable ({str(e).splitlines()[0]})") from None


def _save_hospitals(config: CoordinatorConfig, hospitals: list[AdmittedHospital]) -> None:
    table = {h.name: h.model_dump(exclude={"name"}) for h in hospitals}
    tmp = config.hospitals_file.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps({"hospitals": table}))
    tmp.replace(config.hospitals_file)


def add_hospital(config: CoordinatorConfig, name: str, key_path: Path) -> AdmittedHospital:
    """Admit a hospital: validate its node key and record it (registering it with a running
    SuperLink is the caller's next step)."""
    if not _NAME.match(name):
        raise CoordinatorError(f"hospital name {name!r}: letters, digits, '.', '_' or '-' only (at most 64)")
    key = load_node_public_key(key_path)
    hospitals = load_hospitals(config)
    for h in hospitals:
        if h.name == name:
            raise CoordinatorError(f"{name} is already admitted (key {h.fingerprint}); remove-hospital {name} first")
        if h.fingerprint == key.fingerprint:
            raise CoordinatorError(f"this key is already admitted as {h.name}: each hospital needs its own key")
    hospital = AdmittedHospital(name=name, key=key.openssh, fingerprint=key.fingerprint, added_at=_utc_now())
    _save_hospitals(config, [*hospitals, hospital])
    return hospital


def remove_hospital(config: CoordinatorConfig, name: str) -> AdmittedHospital:
    """Stop admitting a hospital (unregistering it from a running SuperLink is the caller's next step)."""
    hospitals = load_hospitals(config)
    kept = [h for h in hospitals if h.name != name]
    if len(kept) == len(hospitals):
        names = ", ".join(h.name for h in hospitals) or "none"
        raise CoordinatorError(f"no admitted hospital named {name} (admitted: {names})")
    _save_hospitals(config, kept)
    return next(h for h in hospitals if h.name == name)
