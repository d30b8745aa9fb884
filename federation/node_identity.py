"""Which hospital a node is: node ids against the names their keys were admitted under (``bioverse coordinator``)."""

from __future__ import annotations

import os
from pathlib import Path

from federation.coordinator_service import hospital_node_ids
from federation.coordinator_setup import COORDINATOR_DIR_ENV, load_coordinator
from federation.errors import FederationError

__all__ = ["NodeIdentities", "identity_problem"]


def identity_problem(node_id: int, claimed: str, registered: dict[int, str]) -> str | None:
    """Why a reply from ``node_id`` cannot speak for hospital ``claimed``; None when its key was
    admitted under that name. The node id is authenticated (every Fleet request is signed with
    the node's registered key); the hospital id in its node config is only a claim."""
    name = registered.get(node_id)
    if name is None:
        return f"node {node_id} is not among the coordinator's admitted hospitals"
    if name != claimed:
        return f"node {node_id} was admitted as {name} but claims to be {claimed}"
    return None


class NodeIdentities:
    """``{node id: admitted hospital}`` from the coordinator's running SuperLink, looked up once
    and again when an unknown node answers. ``lookup()`` is None outside a coordinator (the
    environment variable unset: simulation, or a SuperLink without node authentication)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = directory if directory is not None else os.environ.get(COORDINATOR_DIR_ENV)
        self._known: dict[int, str] = {}

    def lookup(self, node_id: int | None = None) -> dict[int, str] | None:
        if not self.directory:
            return None
        if not self._known or (node_id is not None and node_id not in self._known):
            try:
                self._known = hospital_node_ids(load_coordinator(Path(self.directory)))
            except FederationError:
                return self._known or {}
        return self._known

    def problem(self, node_id: int, claimed: str) -> str | None:
        """:func:`identity_problem` for one reply; None outside a coordinator."""
        registered = self.lookup(node_id)
        return None if registered is None else identity_problem(node_id, claimed, registered)
