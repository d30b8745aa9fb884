"""A long-running ClientApp runner for ``flower-supernode --isolation process``: imports torch and the ClientApp once, forks a child per task."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from federation.polling import Backoff, fast_object_pulls

__all__ = ["DEFAULT_PRELOAD", "main", "serve", "wait_for_wakeup", "watch_parent"]

log = logging.getLogger("bioverse.app_runner")

#: Modules a child would import for every task (measured: a tabular task's child imported
#: opacus, sklearn, Flower's FAB installer and the tabular training modules, ~3 s on a busy
#: 2-core machine): imported once here, shared copy-on-write. ``module:function`` also calls
#: the function (a warm-up that imports what a first call imports lazily: the modality registry,
#: pandas' support in sklearn). ``BIOVERSE_RUNNER_PRELOAD`` (comma-separated) replaces the list,
#: e.g. to add ``training.imaging.hospital`` at an imaging site.
DEFAULT_PRELOAD = ("torch", "opacus", "sklearn.model_selection", "flwr.supernode.runtime.run_clientapp",
                   "federation.client_app", "training.tabular.hospital", "training.tabular.local",
                   "training.tabular.modality", "training.imaging.modality", "training.tabular.data:warm_up",
                   "encodings.cp437")


def preload(modules: Sequence[str]) -> None:
    """Import ``modules`` now, calling ``module:function`` entries (one that fails is left to the
    child, which reports it)."""
    for entry in modules:
        name, _, function = entry.partition(":")
        try:
            module = importlib.import_module(name)
            if function:
                getattr(module, function)()
        except Exception as err:  # noqa: BLE001 - the task's child raises it again, to the coordinator
            log.warning("preloading %s failed: %s", entry, err)


def _run_task(token: str, address: str, insecure: bool, certificates: bytes | None) -> int:
    """Run one task in this (forked) process with Flower's own ClientApp process body."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    try:
        run_clientapp(runtime_api_address=address, token=token, insecure=insecure, certificates=certificates,
                      parent_pid=os.getppid(), runtime_dependency_install=False)
    except SystemExit as done:  # flwr_exit ends the task process with the task's exit code
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the runner's loop
        traceback.print_exc()
        return 1
    return 0


def _fork_task(task_id: int, token: str, address: str, insecure: bool, certificates: bytes | None) -> int:
    started = time.monotonic()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = _profiled(task_id, _run_task, token, address, insecure, certificates)
        log.info("task %d ran in %.2f s (exit code %d)", task_id, time.monotonic() - started, code)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _profiled(task_id: int, run: Callable[..., int], *args: object) -> int:
    """``run(*args)``; under cProfile, written to ``$BIOVERSE_RUNNER_PROFILE/task-<id>.prof``, where that is set."""
    where = os.environ.get("BIOVERSE_RUNNER_PROFILE")
    if not where:
        return run(*args)
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(run, *args)
    finally:
        os.makedirs(where, exist_ok=True)
        profile.dump_stats(os.path.join(where, f"task-{task_id}.prof"))


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
        children.discard(pid)


def wait_for_wakeup(fd: int | None, timeout: float) -> bool:
    """Block until the SuperNode signals a new task or ``timeout`` passes; False: the SuperNode is gone."""
    if fd is None:
        time.sleep(timeout)
        return True
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return True
        return bool(data)  # b"": the write end closed, the SuperNode exited
    return True


def serve(address: str, *, insecure: bool, root_certificates: str | None, parent_pid: int | None,
          wakeup_fd: int | None, modules: Sequence[str] = DEFAULT_PRELOAD, ceiling: float = 1.0) -> None:
    """Acquire the SuperNode's pending ClientApp tasks and run each in a forked child, until the
    SuperNode exits. With ``wakeup_fd`` the SuperNode signals each new task (a byte on a pipe), and
    polling is only a safety net."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    preload(modules)
    if not fast_object_pulls():  # a task's child pulls its input: inherited through the fork
        log.warning("flwr's object pulls are not the ones expected (flwr 1.42): keeping their 1 s retry wait")
    certificates = None if root_certificates is None else open(root_certificates, "rb").read()  # noqa: SIM115
    client = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure, root_certificates=None if insecure else root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    backoff = Backoff(first=0.01, factor=2.0, ceiling=ceiling)
    children: set[int] = set()
    log.info("ClientApp runner ready on %s (preloaded: %s)", address, ", ".join(modules) or "nothing")
    while parent_pid is None or os.getppid() == parent_pid:
        _reap(children)
        acquired = client.AcquireTask(request)
        if acquired.HasField("task") and acquired.token:
            children.add(_fork_task(acquired.task.task_id, acquired.token, address, insecure, certificates))
            backoff.reset()
            continue
        if not wait_for_wakeup(wakeup_fd, backoff.next() if wakeup_fd is None else ceiling):
            break
    client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m federation.app_runner --runtime-api-address HOST:PORT (--insecure | --root-certificates CA)``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--wakeup-fd", type=int, default=None)
    parser.add_argument("--preload", default=os.environ.get("BIOVERSE_RUNNER_PRELOAD", ",".join(DEFAULT_PRELOAD)),
                        help="comma-separated modules to import once")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # as in federation.supernode_main, before flwr is imported
    if not args.insecure and args.root_certificates is None:
        parser.error("pass --insecure or --root-certificates")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.propagate = False  # the ClientApp may configure the root logger in a child: one line, not two
    log.setLevel(logging.INFO)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid)
    try:
        serve(args.runtime_api_address, insecure=args.insecure, root_certificates=args.root_certificates,
              parent_pid=args.parent_pid, wakeup_fd=args.wakeup_fd, modules=[m for m in args.preload.split(",") if m])
    finally:
        _exit_now(0)


def _exit_now(code: int) -> None:
    """End the runner without waiting for threads the preloaded libraries started (seen: runners
    orphaned for an hour in a futex wait at interpreter exit after their SuperNode was killed)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def watch_parent(parent_pid: int, every: float = 1.0) -> threading.Thread:
    """A daemon thread that ends the runner once its SuperNode is gone (re-parented), even while
    the main loop is blocked in a request Flower's client retries."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        log.info("the SuperNode (pid %d) is gone: the runner stops", parent_pid)
        _exit_now(0)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    main()
