"""The coordinator's ``flower-superlink`` process."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from federation.processes import child_env, flower_bin

__all__ = ["SuperLinkTLS", "start_superlink", "superlink_command"]


@dataclass(frozen=True)
class SuperLinkTLS:
    """TLS and node authentication of a coordinator's SuperLink.

    Attributes:
        certfile: The server certificate (its SANs name 127.0.0.1 and localhost).
        keyfile: Its private key.
        ca_certfile: The federation's CA certificate.
        database: SQLite file keeping runs, nodes and messages across restarts.
        node_auth: Admit only SuperNodes whose key is registered (``--enable-supernode-auth``).
    """

    certfile: Path
    keyfile: Path
    ca_certfile: Path
    database: Path | None = None
    node_auth: bool = True

    def arguments(self) -> list[str]:
        args = ["--ssl-certfile", str(self.certfile), "--ssl-keyfile", str(self.keyfile),
                "--ssl-ca-certfile", str(self.ca_certfile)]
        args += ["--enable-supernode-auth"] if self.node_auth else []
        return args + (["--database", str(self.database)] if self.database else [])


def superlink_command(*, host: str = "127.0.0.1", port: int, simulation: bool, tls: SuperLinkTLS | None = None) -> list[str]:
    """The ``flower-superlink`` command line; all its APIs share ``port`` (HTTPS with ``tls``,
    else plain HTTP).

    Runtime dependency installation is off: the apps run in this environment, where
    BioVerse is installed.
    """
    command = [
        flower_bin("flower-superlink"),
        *(tls.arguments() if tls else ["--insecure"]),
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
    ]
    return command + (["--simulation"] if simulation else [])


def start_superlink(*, port: int, log_file: Path, simulation: bool, extra_env: dict[str, str] | None = None,
                    tls: SuperLinkTLS | None = None) -> subprocess.Popen:
    """Start a ``flower-superlink`` on loopback as a child process."""
    command = superlink_command(port=port, simulation=simulation, tls=tls)
    env = child_env(extra_env)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
