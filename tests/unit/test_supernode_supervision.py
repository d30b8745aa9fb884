"""``bioverse hospital start``'s supervision of the SuperNode: how it ended becomes one line; nothing it started is left behind."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from federation.errors import FederationError
from federation.supernode import run_supernode, supernode_failure

NAMES = {"public_key": "/srv/node/keys/h1.pub", "public_key_name": "h1.pub", "hospital_id": "h1",
         "private_key": "/srv/node/keys/h1", "ca_cert": "/srv/node/ca.pem"}
#: What flower-supernode 1.42 printed against a SuperLink with node auth that never registered its key.
UNREGISTERED = """ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink.
"""


def test_known_endings_become_the_line_that_says_what_to_fix() -> None:
    assert supernode_failure(UNREGISTERED, 305, NAMES) == (
        "the coordinator has not registered this hospital's key: send it /srv/node/keys/h1.pub "
        "(its operator runs: bioverse coordinator add-hospital h1 h1.pub)")
    assert "not an OpenSSH ECDSA private key" in supernode_failure("Unable to parse the private key file.", 302, NAMES)
    assert supernode_failure("INFO: starting\nboom: disk full\n", 1, NAMES) == \
        "the SuperNode stopped (exit code 1): boom: disk full"


def test_an_exit_is_reported_even_when_a_child_still_holds_its_output(tmp_path: Path) -> None:
    # the SuperNode's long-running ClientApp process outlives it and keeps the pipe open
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
              f"print({UNREGISTERED!r}, flush=True); sys.exit(305)")
    pid_file, echo = tmp_path / "supernode.pid", io.StringIO()
    started: list[int] = []
    with pytest.raises(FederationError, match="has not registered this hospital's key: send it /srv/node/keys/h1.pub"):
        run_supernode([sys.executable, "-c", script], NAMES, pid_file=pid_file, echo=echo, on_start=started.append)
    assert "[code: 2004]" in echo.getvalue() and not pid_file.exists()
    deadline = time.monotonic() + 10  # its process group, the sleeping child included, goes
    while time.monotonic() < deadline:
        try:
            os.killpg(started[0], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(started[0], 0)
