"""The SuperNode wrapper's poll intervals and launch choices (federation.polling, federation.supernode_main)."""

from __future__ import annotations

import sys

import pytest

from federation.polling import Backoff, PollClock
from federation.supernode import supernode_command
from federation.supernode_main import install_poll_hooks, launch_prefix, runner_command


def test_backoff_grows_to_its_ceiling_and_starts_over_after_activity() -> None:
    backoff = Backoff(first=0.05, factor=2.0, ceiling=0.3)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next() == 0.05


@pytest.mark.parametrize(("first", "factor", "ceiling"), [(0, 1.5, 1), (2, 1.5, 1), (0.1, 0.5, 1)])
def test_a_backoff_that_would_not_wait_or_not_grow_is_refused(first: float, factor: float, ceiling: float) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(first=first, factor=factor, ceiling=ceiling)


def test_the_clock_shortens_only_the_supernode_loops_polls() -> None:
    clock = PollClock(Backoff(first=0.05, factor=2.0, ceiling=0.5), reply_wait=0.02)
    assert clock.interval(3) == 0.05  # an empty Fleet pull: backoff
    assert clock.interval(3) == 0.1
    assert clock.interval(0.5) == 0.02  # waiting for the ClientApp's reply
    assert clock.interval(7) == 7  # anything else is left alone
    assert clock.monotonic() > 0  # the rest of the time module passes through


def test_the_hooks_patch_flowers_supernode_loop_and_reset_on_each_message() -> None:
    from flwr.supernode import start_client_internal as loop

    original_time, original_pull = loop.time, loop._pull_and_store_message
    received: list[int] = []
    try:
        replies = iter([None, 42])
        loop._pull_and_store_message = lambda *a, **k: next(replies)
        clock = install_poll_hooks(loop, on_task=lambda: received.append(1))
        assert clock is not None and loop.time is clock
        clock.fleet.next(), clock.fleet.next()
        assert loop._pull_and_store_message() is None and not received
        assert loop._pull_and_store_message() == 42 and received == [1]
        assert clock.fleet.next() == clock.fleet.first  # reset by the message
    finally:
        loop.time, loop._pull_and_store_message = original_time, original_pull


def test_hooks_leave_an_unexpected_loop_alone() -> None:
    import types

    other = types.ModuleType("not_flowers_loop")
    assert install_poll_hooks(other) is None
    assert not hasattr(other, "time")


def test_the_warm_runner_is_the_default_and_flowers_subprocess_the_fallback() -> None:
    warm = supernode_command(superlink="127.0.0.1:1", port=2, node_config={"hospital-id": "h"})
    assert warm[:3] == [sys.executable, "-m", "federation.supernode_main"]
    assert warm[warm.index("--isolation") + 1] == "process"
    old = supernode_command(superlink="127.0.0.1:1", port=2, node_config={"hospital-id": "h"}, runner="subprocess")
    assert old[0].endswith("flower-supernode") and old[old.index("--isolation") + 1] == "subprocess"
    with pytest.raises(ValueError, match="unknown ClientApp runner"):
        launch_prefix("threads")


def test_the_runner_trusts_the_runtime_apis_ca_when_it_has_tls() -> None:
    insecure = runner_command(address="127.0.0.1:9", root_certificates=None, parent_pid=1, wakeup_fd=5)
    assert "--insecure" in insecure and insecure[insecure.index("--wakeup-fd") + 1] == "5"
    secure = runner_command(address="127.0.0.1:9", root_certificates="/ca.pem", parent_pid=1, wakeup_fd=5)
    assert secure[secure.index("--root-certificates") + 1] == "/ca.pem" and "--insecure" not in secure


def test_the_runner_wakes_on_a_byte_and_stops_when_its_supernode_closes_the_pipe() -> None:
    import os

    from federation.app_runner import wait_for_wakeup

    read_fd, write_fd = os.pipe()
    try:
        assert wait_for_wakeup(read_fd, 0.01)  # nothing yet: the timeout passes, keep serving
        os.write(write_fd, b"tt")
        assert wait_for_wakeup(read_fd, 5)  # a task was stored
        os.close(write_fd)
        assert not wait_for_wakeup(read_fd, 5)  # the SuperNode exited
    finally:
        os.close(read_fd)


def test_object_pulls_retry_a_missing_object_after_milliseconds_not_a_second() -> None:
    import subprocess
    import textwrap

    # in a fresh interpreter: the change is process-wide, as it is in the SuperNode, runner and ServerApp
    script = textwrap.dedent("""
        import time
        from flwr.supercore.inflatable import inflatable_utils as iu
        from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
        from federation.polling import fast_object_pulls

        assert iu.pull_objects.__kwdefaults__["initial_backoff"] == 1
        assert fast_object_pulls() and fast_object_pulls()  # applied once, idempotent
        misses = []

        def pull(object_id):
            if len(misses) < 3:  # stored a moment after it is first asked for
                misses.append(time.monotonic())
                raise ObjectUnavailableError(object_id)
            return b"body"

        started = time.monotonic()
        assert iu.pull_objects(["a"], pull) == {"a": b"body"}
        waits = [b - a for a, b in zip([started, *misses], misses + [time.monotonic()])][1:]
        kw = iu.pull_and_inflate_object_from_tree.__kwdefaults__
        print(max(waits) < 0.9, kw["initial_backoff"], kw["backoff_cap"], kw["max_time"],
              kw["max_tries_per_object"] * kw["backoff_cap"] >= kw["max_time"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "0.02", "0.5", "7200", "True"]


def test_object_pulls_of_another_flower_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils as iu

    from federation.polling import fast_object_pulls

    for function in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(function, "__kwdefaults__", {**function.__kwdefaults__, "initial_backoff": 3})
    assert not fast_object_pulls()
    assert iu.pull_objects.__kwdefaults__["initial_backoff"] == 3 and iu.pull_objects.__kwdefaults__["backoff_cap"] == 10


def test_the_runner_preloads_modules_and_runs_warm_ups_and_survives_a_broken_entry(caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    from federation.app_runner import DEFAULT_PRELOAD, preload

    assert "training.tabular.data:warm_up" in DEFAULT_PRELOAD
    lazy = "narwhals._pandas_like.dataframe"  # what sklearn's first split of a dataframe imports
    script = (f"import sys; from federation.app_runner import preload; before = {lazy!r} in sys.modules; "
              f"preload(['training.tabular.data:warm_up']); print(before, {lazy!r} in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "True"]
    preload(["json", "no_such_module_here", "json:no_such_function"])
    failed = [r.getMessage() for r in caplog.records if "preloading" in r.getMessage()]
    assert len(failed) == 2 and "no_such_module_here" in failed[0] and "json:no_such_function" in failed[1]
