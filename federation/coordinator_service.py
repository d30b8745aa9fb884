"""``bioverse coordinator start``: the SuperLink on loopback (TLS, node auth, database) behind nginx."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from federation.control_api import is_listening, list_nodes, register_node, unregister_node
from federation.coordinator_setup import COORDINATOR_DIR_ENV, AdmittedHospital, CoordinatorConfig, load_hospitals
from federation.errors import CertificateError, CoordinatorError, LaunchError
from federation.pki import check_server_certificate, parse_node_key
from federation.processes import child_env, stop
from federation.proxy import nginx_command, write_nginx_config
from federation.superlink import SuperLinkTLS, start_superlink

__all__ = ["Coordinator", "hospital_node_ids", "preflight", "running_coordinator", "serve", "sync_hospitals"]


@dataclass
class Coordinator:
    """A started coordinator: its SuperLink and nginx child processes."""

    config: CoordinatorConfig
    superlink: subprocess.Popen
    nginx: subprocess.Popen
    node_ids: dict[str, int]
    problems: list[str]

    def failed(self) -> str | None:
        """Which child died, with the tail of its log; None while both run."""
        for name, process, log in (("the SuperLink", self.superlink, self.config.run_dir / "superlink.log"),
                                   ("nginx", self.nginx, self.config.run_dir / "nginx" / "error.log")):
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode}: {_last_line(log)}"
        return None

    def stop(self) -> None:
        stop(self.nginx, grace=5)
        stop(self.superlink, grace=10)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1].strip()[:200] if lines else f"see {path}"


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def preflight(config: CoordinatorConfig) -> None:
    """One-line errors for what would stop the coordinator: certificates (expired, another
    CA's, wrong names), nginx missing, ports taken."""
    from federation.proxy import nginx_executable

    for address in (config.public_address, config.superlink_address):
        problem = check_server_certificate(config.server_cert, config.ca_cert, address)
        if problem:
            raise CertificateError(problem)
    nginx_executable()
    if not _port_free("127.0.0.1", config.superlink_port):
        raise CoordinatorError(f"port {config.superlink_port} on 127.0.0.1 (the SuperLink's) is taken: stop what uses it "
                               "or re-run init --force --superlink-port PORT")
    if not _port_free(config.listen_host, config.public_port):
        raise CoordinatorError(f"port {config.public_port} on {config.listen_host} (the hospitals') is taken: stop what "
                               "uses it or re-run init --force with another public port")


def sync_hospitals(config: CoordinatorConfig,
                   hospitals: list[AdmittedHospital] | None = None) -> tuple[dict[str, int], list[str]]:
    """Make the running SuperLink admit exactly the listed hospitals: register their keys
    (under their names), unregister any other key. Returns ``{hospital: node id}`` and one
    line per hospital whose key the SuperLink refused (e.g. a key removed before)."""
    hospitals = load_hospitals(config) if hospitals is None else hospitals
    wanted = {h.name: parse_node_key(h.key.encode(), h.name).pem for h in hospitals}
    node_ids, problems = {}, []
    for name, pem in wanted.items():
        try:
            node_ids[name] = register_node(config.superlink_address, config.ca_cert, pem, name)
        except CoordinatorError as e:
            problems.append(str(e))
    keep = set(wanted.values())
    for node in list_nodes(config.superlink_address, config.ca_cert):
        if node.status != "unregistered" and node.public_key_pem not in keep:
            unregister_node(config.superlink_address, config.ca_cert, node.public_key_pem)
    return node_ids, problems


def hospital_node_ids(config: CoordinatorConfig) -> dict[int, str]:
    """``{node id: hospital name}`` for the keys the running SuperLink holds, matched by key
    against the admitted hospitals: how the coordinator can check that the node that answers
    for a hospital id is the one admitted under that name."""
    by_key = {parse_node_key(h.key.encode(), h.name).pem: h.name for h in load_hospitals(config)}
    return {n.node_id: by_key[n.public_key_pem] for n in list_nodes(config.superlink_address, config.ca_cert)
            if n.status != "unregistered" and n.public_key_pem in by_key}


def _wait_listening(address: str, timeout: float, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CoordinatorError(f"{what} exited with code {process.returncode} before listening: {_last_line(log)}")
        if is_listening(address):
            return
        time.sleep(0.1)
    raise CoordinatorError(f"{what} does not listen on {address} after {timeout:.0f} s: see {log}")


@contextlib.contextmanager
def running_coordinator(config: CoordinatorConfig, *, ready_timeout: float = 90.0) -> Iterator[Coordinator]:
    """Start the SuperLink (loopback, TLS, node auth, database), register the admitted
    hospitals, start nginx on the public address; stop both on exit."""
    preflight(config)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    tls = SuperLinkTLS(certfile=config.server_cert, keyfile=config.server_key, ca_certfile=config.ca_cert,
                       database=config.database, node_auth=True)
    env = {"FLWR_HOME": str(run_dir / "flwr-home"), "PYTHONWARNINGS": "ignore", COORDINATOR_DIR_ENV: str(config.directory)}
    superlink = start_superlink(port=config.superlink_port, log_file=run_dir / "superlink.log", simulation=False,
                                extra_env=env, tls=tls)
    nginx: subprocess.Popen | None = None
    try:
        _wait_listening(config.superlink_address, ready_timeout, superlink, "the SuperLink", run_dir / "superlink.log")
        node_ids, problems = sync_hospitals(config)
        conf = write_nginx_config(run_dir, listen_host=config.listen_host, listen_port=config.public_port,
                                  superlink_port=config.superlink_port, cert=config.server_cert,
                                  key=config.server_key, ca_cert=config.ca_cert)
        error_log = conf.parent / "error.log"
        with open(error_log, "ab") as out:
            nginx = subprocess.Popen(nginx_command(conf), stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                                     start_new_session=True)
        probe = "127.0.0.1" if config.listen_host in ("0.0.0.0", "::") else config.listen_host  # noqa: S104
        _wait_listening(f"{probe}:{config.public_port}", 20, nginx, "nginx", error_log)
        coordinator = Coordinator(config=config, superlink=superlink, nginx=nginx, node_ids=node_ids, problems=problems)
        yield coordinator
    finally:
        stop(nginx, grace=5)
        stop(superlink, grace=10)


def serve(config: CoordinatorConfig, on_ready: Callable[[Coordinator], None]) -> None:
    """Run the coordinator in the foreground until SIGTERM or SIGINT (then stop both children);
    a child that dies stops the other and raises with its last log line."""
    stopping: list[int] = []

    def _request_stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with running_coordinator(config) as coordinator:
            on_ready(coordinator)
            while not stopping:
                failure = coordinator.failed()
                if failure:
                    raise CoordinatorError(failure)
                time.sleep(0.2)
    except LaunchError as e:
        raise CoordinatorError(str(e)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
