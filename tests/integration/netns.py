"""Separate network hosts for integration tests: Linux network namespaces joined by a bridge."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from federation.processes import stop

__all__ = ["Host", "Network", "network", "skip_reason", "sweep_orphans"]

#: Every namespace this module creates is named ``<prefix><creator pid>x<random id>-<host>``; the
#: prefix can be set (``BIOVERSE_NETNS_PREFIX``) so that whoever shares the machine can tell them apart.
PREFIX = os.environ.get("BIOVERSE_NETNS_PREFIX", "bvmh")
_IP = shutil.which("ip") or "/usr/sbin/ip"


def skip_reason() -> str | None:
    """Why namespaces cannot be built here (not root, no ``ip netns``), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not Path(_IP).exists():
        return "iproute2's ip command is not installed"
    probe = f"{PREFIX}probe{secrets.token_hex(3)}"
    made = subprocess.run([_IP, "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.returncode}"
    subprocess.run([_IP, "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str, timeout: float = 10) -> None:
    done = subprocess.run([_IP, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    """One host: a network namespace with loopback and ``eth0`` on the network's bridge."""

    name: str
    namespace: str
    address: str
    network: Network = field(repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return [_IP, "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` on this host in its own process group, output appended to ``log``;
        the network stops it at teardown (``ip netns exec`` execs the command: same pid)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(self.command(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                       start_new_session=True)
        self.network.processes.append(process)
        return process

    def run(self, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to the end (bounded by ``timeout``), capturing its output."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)

    def reaches(self, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from this host to ``address:port`` is accepted."""
        probe = f"exec 3<>/dev/tcp/{address}/{port}"
        try:
            return self.run(["timeout", str(timeout), "bash", "-c", probe], timeout=timeout + 10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_for(self, address: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
        """Block until ``address:port`` accepts connections from this host; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with code {process.returncode} before {address}:{port} listened")
            if self.reaches(address, port, timeout=1.0):
                return
            time.sleep(0.3)
        raise TimeoutError(f"{address}:{port} not reachable from {self.name} after {timeout:.0f} s")

    def crash(self) -> None:
        """Power loss: SIGKILL every process on this host at once (no handler runs)."""
        _kill_namespace(self.namespace)
        for process in self.network.processes:
            process.poll()  # reap what died

    def cut(self) -> None:
        """Unplug this host: its link goes down on both sides of the cable."""
        _ip("-n", self.network.switch, "link", "set", self._port, "down")
        _ip("-n", self.namespace, "link", "set", "eth0", "down")

    def restore(self) -> None:
        """Plug this host back in."""
        _ip("-n", self.network.switch, "link", "set", self._port, "up")
        _ip("-n", self.namespace, "link", "set", "eth0", "up")

    @property
    def _port(self) -> str:
        return f"p-{self.name}"[:15]


@dataclass
class Network:
    """Hosts on one private /24 whose bridge lives in a "switch" namespace: nothing is added to
    the root namespace, so the addresses exist only inside these namespaces."""

    tag: str
    subnet: str
    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def add_host(self, name: str) -> Host:
        """A new host on the bridge, at the next address of the subnet."""
        if name in self.hosts or len(name) > 12:
            raise ValueError(f"host name {name!r} taken or longer than 12 characters")
        namespace = f"{self.tag}-{name}"
        address = f"{self.subnet}.{len(self.hosts) + 1}"
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        host = Host(name, namespace, address, self)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", host._port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", host._port, "master", "br0")
        _ip("-n", self.switch, "link", "set", host._port, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Stop every process started on these hosts (process groups, then anything left in the
        namespaces), and delete the namespaces with their links. Safe to call twice."""
        for process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable: the namespace sweep below goes on
                stop(process, grace=5.0)
        self.processes.clear()
        for namespace in reversed(self.namespaces):
            _kill_namespace(namespace)
            subprocess.run([_IP, "netns", "del", namespace], capture_output=True, timeout=10)
        self.namespaces.clear()


def sweep_orphans() -> list[str]:
    """Delete the namespaces (and kill their processes) that a test process which no longer
    exists left behind (killed with SIGKILL: no teardown ran); returns their names."""
    listed = subprocess.run([_IP, "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    orphans = []
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        found = re.fullmatch(rf"{re.escape(PREFIX)}(\d+)x[0-9a-f]+-.+", name)
        if found is None or Path(f"/proc/{found.group(1)}").exists():
            continue
        _kill_namespace(name)
        subprocess.run([_IP, "netns", "del", name], capture_output=True, timeout=10)
        orphans.append(name)
    return orphans


def _kill_namespace(namespace: str) -> None:
    """SIGKILL every process in ``namespace`` (only processes this module started live there)."""
    listed = subprocess.run([_IP, "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def network(names: Sequence[str]) -> Iterator[Network]:
    """Hosts ``names`` on a fresh bridge in 10.213.<random>.0/24, torn down on the way out
    (also at interpreter exit, should the ``with`` never unwind)."""
    sweep_orphans()
    tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
    net = Network(tag, f"10.213.{secrets.randbelow(254) + 1}", f"{tag}-sw")
    atexit.register(net.close)
    try:
        _ip("netns", "add", net.switch)
        net.namespaces.append(net.switch)
        _ip("-n", net.switch, "link", "set", "lo", "up")
        _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.switch, "link", "set", "br0", "up")
        for name in names:
            net.add_host(name)
        yield net
    finally:
        net.close()
        atexit.unregister(net.close)
