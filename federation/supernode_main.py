"""``flower-supernode`` with adaptive Fleet polling and, under ``--isolation process``, BioVerse's warm ClientApp runner."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from federation.polling import FLEET_IDLE_SLEEP, REPLY_WAIT_SLEEP, PollClock, fast_object_pulls, fleet_backoff_from_env

__all__ = ["RUNNERS", "install_poll_hooks", "launch_prefix", "main", "runner_command"]

#: How a SuperNode runs its ClientApp tasks: ``warm`` (this wrapper: adaptive polling, one warm
#: runner that forks a child per task) or ``subprocess`` (Flower's own: a fresh process per task).
RUNNERS = ("warm", "subprocess")

log = logging.getLogger("bioverse.supernode")


def install_poll_hooks(loop_module: ModuleType, on_task: Callable[[], None] = lambda: None) -> PollClock | None:
    """Shorten the polling of Flower's SuperNode loop (``flwr.supernode.start_client_internal``):
    its 3 s sleep after an empty Fleet pull becomes an adaptive backoff reset by every received
    message, and its 0.5 s waits for the ClientApp's reply become 20 ms. ``on_task`` runs after a
    message was stored for a task. Returns None (and changes nothing) where the loop is not the one
    these hooks were written for."""
    pull = getattr(loop_module, "_pull_and_store_message", None)
    try:
        source = inspect.getsource(loop_module)
    except (OSError, TypeError):
        return None
    expected = (f"time.sleep({FLEET_IDLE_SLEEP:g})", f"time.sleep({REPLY_WAIT_SLEEP:g})", "run_id = _pull_and_store_message(")
    if pull is None or getattr(loop_module, "time", None) is not time or not all(s in source for s in expected):
        log.warning("flwr's SuperNode loop is not the one expected (flwr 1.42): keeping its own poll intervals")
        return None
    clock = PollClock(fleet_backoff_from_env())

    def pull_and_store(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            clock.fleet.reset()
            on_task()
        return run_id

    loop_module.time = clock  # type: ignore[attr-defined]
    loop_module._pull_and_store_message = pull_and_store  # type: ignore[attr-defined]
    return clock


def launch_prefix(runner: str) -> tuple[list[str], str]:
    """The executable (argv prefix) and ``--isolation`` value of a SuperNode for ``runner``."""
    if runner == "warm":
        return [sys.executable, "-m", "federation.supernode_main"], "process"
    if runner == "subprocess":
        from federation.processes import flower_bin

        return [flower_bin("flower-supernode")], "subprocess"
    raise ValueError(f"unknown ClientApp runner {runner!r}: use one of {', '.join(RUNNERS)}")


def runner_command(*, address: str, root_certificates: str | None, parent_pid: int, wakeup_fd: int) -> list[str]:
    """The command line of the warm ClientApp runner for one SuperNode."""
    tls = ["--insecure"] if root_certificates is None else ["--root-certificates", root_certificates]
    return [sys.executable, "-m", "federation.app_runner", "--runtime-api-address", address, *tls,
            "--parent-pid", str(parent_pid), "--wakeup-fd", str(wakeup_fd)]


class _Runner:
    """Keeps one warm runner process alive beside this SuperNode and wakes it for every task."""

    def __init__(self, address: str, root_certificates: str | None) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.command = runner_command(address=address, root_certificates=root_certificates,
                                      parent_pid=os.getpid(), wakeup_fd=self.read_fd)
        threading.Thread(target=self._keep_alive, name="bioverse-app-runner", daemon=True).start()

    def _keep_alive(self) -> None:
        while True:
            process = subprocess.Popen(self.command, pass_fds=(self.read_fd,))
            code = process.wait()
            if code in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL):
                return  # stopped with its SuperNode's process group
            log.warning("the ClientApp runner exited with code %s; starting it again", code)
            time.sleep(1.0)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.write_fd, b"t")


def main() -> None:
    """Run ``flower-supernode`` with the arguments of this process, hooks installed.

    Flower's telemetry is off unless ``FLWR_TELEMETRY_ENABLED`` says otherwise: a hospital's node
    phones nowhere but its coordinator, and every task process would otherwise post an event to
    telemetry.flower.ai (about 2 s per task where the address does not resolve)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is imported, below
    from flwr.common.constant import ISOLATION_MODE_PROCESS
    from flwr.supercore.address import resolve_bind_address
    from flwr.supernode import start_client_internal as loop_module

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")

    runner: list[_Runner] = []
    install_poll_hooks(loop_module, on_task=lambda: runner[0].wake() if runner else None)
    if not fast_object_pulls():
        log.warning("flwr's object pulls are not the ones expected (flwr 1.42): keeping their 1 s retry wait")
    start = cli.start_client_internal

    def start_with_runner(**kwargs: Any) -> None:
        if kwargs.get("isolation") == ISOLATION_MODE_PROCESS and os.environ.get("BIOVERSE_APP_RUNNER", "warm") == "warm":
            address = resolve_bind_address(kwargs["runtime_api_address"])
            tls = kwargs.get("runtime_root_certificates_path") if kwargs.get("runtime_certificates") else None
            runner.append(_Runner(address, tls))
        start(**kwargs)

    cli.start_client_internal = start_with_runner  # type: ignore[attr-defined]
    sys.argv[0] = "flower-supernode"
    cli.flower_supernode()


if __name__ == "__main__":
    main()
