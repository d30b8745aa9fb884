"""Child processes of the Flower engines: ports, environment, executables, stopping."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from federation.errors import LaunchError

__all__ = ["child_env", "flower_bin", "free_port", "kill_tree", "launcher_identity", "node_config_arg", "stop",
           "wait_for_port"]


def launcher_identity() -> str:
    """The OS user launching the experiment, ``os:<login>`` (``unknown`` where there is none):
    unauthenticated, kept for the record; an authenticated launch passes ``launched_by``."""
    import getpass

    from experiments.gate import os_identity

    try:
        return os_identity(getpass.getuser()).tag
    except (OSError, KeyError):
        return "unknown"


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LaunchError(f"process exited with code {process.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise LaunchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: this interpreter's bin folder first on PATH (the
    SuperLink and SuperNode spawn ``flower-superexec`` and app processes by name, and the
    virtual environment need not be activated), update checks off."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{path}" if path else bin_dir,
            "FLWR_DISABLE_UPDATE_CHECK": "1", **(extra or {})}


def flower_bin(name: str) -> str:
    """A Flower executable from this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def node_config_arg(values: dict[str, str | float | int]) -> str:
    """Format a SuperNode's ``--node-config`` (TOML values: strings quoted)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{escaped}"')
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def stop(process: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop a child process and its group: SIGTERM, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a child and everything it started, whatever their process groups (a machine
    dying: no handler runs), and reap them; bounded by 30 s."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
