"""A hospital's ``flower-supernode`` process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from federation.processes import child_env, flower_bin, node_config_arg

__all__ = ["start_supernode", "supernode_command"]


def supernode_command(*, superlink: str, port: int, node_config: dict[str, str | float | int]) -> list[str]:
    """The ``flower-supernode`` command line of one hospital (insecure, on loopback)."""
    return [
        flower_bin("flower-supernode"),
        "--insecure",
        "--superlink", superlink,
        "--isolation", "subprocess",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--node-config", node_config_arg(node_config),
    ]


def start_supernode(*, superlink: str, port: int, node_config: dict[str, str | float | int], log_file: Path) -> subprocess.Popen:
    """Start one hospital's ``flower-supernode`` as a separate process."""
    env = child_env({"PYTHONWARNINGS": "ignore"})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    command = supernode_command(superlink=superlink, port=port, node_config=node_config)
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
