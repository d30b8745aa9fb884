"""The coordinator's SuperLink Control API on loopback: register, unregister and list hospitals' node keys."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import CoordinatorError

__all__ = ["RegisteredNode", "is_listening", "list_nodes", "register_node", "unregister_node"]


@dataclass(frozen=True)
class RegisteredNode:
    """A node key the SuperLink knows: its node id, the name it was registered under, status."""

    node_id: int
    name: str
    status: str
    public_key_pem: bytes


def is_listening(address: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError, ValueError), socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        return True
    return False


@contextlib.contextmanager
def _client(address: str, ca_cert: Path) -> Iterator[Any]:
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.supercore.control.control_http_client import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

    client = ControlHttpClient.from_server_address(
        server_address=address, insecure=False, root_certificates=ca_cert.read_bytes(),
        interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
    )
    try:
        yield client
    except Exception as e:  # httpx's errors, flwr's error payloads: one line for the operator
        raise CoordinatorError(f"the SuperLink's Control API at {address} refused: {_reason(e)}") from e
    finally:
        client.close()


def _reason(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response is not None:
        with contextlib.suppress(Exception):
            body = response.json()
            return str(body.get("detail") or body.get("message") or body)[:200]
        return f"HTTP {response.status_code}"
    return f"{type(e).__name__}: {e}"[:200]


def list_nodes(address: str, ca_cert: Path) -> list[RegisteredNode]:
    """Every node key the SuperLink holds (any status), with its node id and name."""
    from flwr.proto.control_pb2 import ListNodesRequest  # type: ignore[attr-defined]

    with _client(address, ca_cert) as client:
        response = client.ListNodes(ListNodesRequest())
    return [RegisteredNode(node_id=n.node_id, name=n.name, status=n.status, public_key_pem=bytes(n.public_key))
            for n in response.nodes_info]


def register_node(address: str, ca_cert: Path, public_key_pem: bytes, name: str) -> int:
    """Register a node key under ``name``; its node id. A key already registered (and not
    unregistered) keeps its node id."""
    from flwr.proto.control_pb2 import RegisterNodeRequest  # type: ignore[attr-defined]

    for node in list_nodes(address, ca_cert):
        if node.public_key_pem == public_key_pem:
            if node.status != "unregistered":
                return node.node_id
            raise CoordinatorError(f"{name}'s key was removed before (node {node.node_id}) and flwr never re-admits a "
                                   "removed key: the hospital must make a new key pair")
    with _client(address, ca_cert) as client:
        response = client.RegisterNode(RegisterNodeRequest(public_key=public_key_pem, name=name))
    if not response.node_id:
        raise CoordinatorError(f"the SuperLink did not register {name}'s key")
    return int(response.node_id)


def unregister_node(address: str, ca_cert: Path, public_key_pem: bytes) -> int | None:
    """Unregister the node holding this key; its node id, or None when none held it."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest  # type: ignore[attr-defined]

    for node in list_nodes(address, ca_cert):
        if node.public_key_pem == public_key_pem and node.status != "unregistered":
            with _client(address, ca_cert) as client:
                client.UnregisterNode(UnregisterNodeRequest(node_id=node.node_id))
            return node.node_id
    return None
