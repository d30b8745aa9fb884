"""A hospital's ``flower-supernode`` process: the insecure loopback one and the one with TLS and node authentication."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from federation.errors import FederationError
from federation.processes import child_env, node_config_arg
from federation.supernode_main import launch_prefix

__all__ = ["run_supernode", "secure_supernode_command", "start_supernode", "supernode_command", "supernode_failure"]


def supernode_command(*, superlink: str, port: int, node_config: dict[str, str | float | int], runner: str = "warm") -> list[str]:
    """The ``flower-supernode`` command line of one hospital (insecure, on loopback); ``runner``:
    how it runs ClientApp tasks (``federation.supernode_main.RUNNERS``)."""
    executable, isolation = launch_prefix(runner)
    return [
        *executable,
        "--insecure",
        "--superlink", superlink,
        "--isolation", isolation,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--node-config", node_config_arg(node_config),
    ]


def secure_supernode_command(*, superlink: str, port: int, node_config: dict[str, str | float | int],
                             root_certificates: Path, private_key: Path, runner: str = "warm") -> list[str]:
    """The ``flower-supernode`` command line of a hospital that trusts only its coordinator's
    CA and signs every Fleet request with its node key (the public key is derived from the
    private one: Flower 1.42 deprecates ``--auth-supernode-public-key``)."""
    executable, isolation = launch_prefix(runner)
    return [
        *executable,
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(private_key),
        "--isolation", isolation,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--node-config", node_config_arg(node_config),
    ]


def start_supernode(*, superlink: str, port: int, node_config: dict[str, str | float | int], log_file: Path,
                    runner: str = "warm") -> subprocess.Popen:
    """Start one hospital's ``flower-supernode`` as a separate process."""
    env = child_env({"PYTHONWARNINGS": "ignore"})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    command = supernode_command(superlink=superlink, port=port, node_config=node_config, runner=runner)
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


#: What the SuperNode logs when it gives up, and the line a hospital's IT needs instead.
_FAILURES: tuple[tuple[str, str], ...] = (
    (r"\[code: 2004\]|Failed to activate SuperNode",
     "the coordinator has not registered this hospital's key: send it {public_key} "
     "(its operator runs: bioverse coordinator add-hospital {hospital_id} {public_key_name})"),
    (r"Unable to parse the private key file", "the node key {private_key} is not an OpenSSH ECDSA private key: "
                                              "run 'bioverse hospital join' again to make a new pair"),
    (r"CERTIFICATE_VERIFY_FAILED|certificate verify failed",
     "the coordinator's TLS certificate failed verification against {ca_cert}: run 'bioverse hospital status'"),
)


def supernode_failure(log_text: str, returncode: int, names: dict[str, str]) -> str:
    """The one line that says what to fix after the SuperNode exited with ``returncode``."""
    for pattern, line in _FAILURES:
        if re.search(pattern, log_text):
            return line.format(**names)
    last = [s for s in log_text.splitlines() if s.strip() and not s.startswith(("INFO", "For more"))]
    return f"the SuperNode stopped (exit code {returncode}): {last[-1].strip() if last else 'no output'}"


def run_supernode(command: list[str], names: dict[str, str], *, pid_file: Path | None = None,
                  echo: IO[str] | None = None, on_start: Callable[[int], None] | None = None) -> None:
    """Run the SuperNode in the foreground, its output passed through; SIGTERM and SIGINT go
    to it. Returns when it stops cleanly (a signal).

    Raises:
        FederationError: it stopped on its own, with the line saying what to fix
            (:func:`supernode_failure`), e.g. an unregistered key.
    """
    echo = echo or sys.stdout
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               env=child_env({"PYTHONWARNINGS": "ignore"}), start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    if pid_file is not None:
        pid_file.write_text(f"{process.pid}\n")
    if on_start is not None:
        on_start(process.pid)
    tail: list[str] = []

    def pass_through() -> None:  # in a thread: the SuperNode's children may hold the pipe after it exits
        assert process.stdout is not None
        for line in process.stdout:
            echo.write(line)
            echo.flush()
            tail.append(line)
            del tail[:-200]

    reader = threading.Thread(target=pass_through, daemon=True)
    reader.start()
    try:
        returncode = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()
        with contextlib.suppress(ProcessLookupError):  # what it left behind (ClientApp processes)
            os.killpg(process.pid, signal.SIGTERM)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        reader.join(5)
    if stopping or returncode == 0:
        return
    raise FederationError(supernode_failure("".join(tail), returncode, names))
