"""The coordinator's ``flower-superlink`` process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from federation.processes import child_env, flower_bin

__all__ = ["start_superlink", "superlink_command"]


def superlink_command(*, host: str = "127.0.0.1", port: int, simulation: bool) -> list[str]:
    """The ``flower-superlink`` command line; all its APIs share ``port`` (HTTP).

    Runtime dependency installation is off: the apps run in this environment, where
    BioVerse is installed.
    """
    command = [
        flower_bin("flower-superlink"),
        "--insecure",
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
    ]
    return command + (["--simulation"] if simulation else [])


def start_superlink(*, port: int, log_file: Path, simulation: bool, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a ``flower-superlink`` on loopback as a child process."""
    command = superlink_command(port=port, simulation=simulation)
    env = child_env(extra_env)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
