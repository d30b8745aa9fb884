"""The coordinator's copy of every audit-chain head its hospitals sent: anchors kept in the run, outside each hospital."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Message
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from federation.errors import AuditLogError
from federation.node_identity import NodeIdentities
from federation.site_audit import ANCHORS_FORMAT

__all__ = ["HEADS_ARTIFACT", "AuditHeads", "anchors_document", "heads_recorder", "stored_heads"]

log = logging.getLogger(__name__)

#: The run's artifact holding every head received so far (rewritten whenever one arrives).
HEADS_ARTIFACT = "audit-heads.json"


class AuditHeads:
    """Every ``audit-head`` a run's hospitals sent in their replies' ``site`` record, in the
    order received: per hospital, the order of its chain. A head is kept once."""

    def __init__(self) -> None:
        self.heads: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        self._unsaved = False

    def add(self, hospital: str, stage: str, server_round: int | None, head: str, status: str = "") -> bool:
        """Keep a head a hospital's reply carried (empty: none); True if it is new.

        Args:
            hospital: The hospital the reply speaks for (its node's admitted name).
            stage: statistics, train, evaluate or validate (the kind of the hospital's audit row).
            server_round: The round (0: statistics; None: the final validation).
            head: The reply's ``site`` record's ``audit-head``.
            status: The reply's status (ok, refused, error).
        """
        if not head or (hospital, head) in self._seen:
            return False
        self._seen.add((hospital, head))
        self.heads.append({"hospital": hospital, "stage": stage, "round": server_round, "head": head, "status": status,
                           "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self._unsaved = True
        return True

    def restore(self, heads: list[dict[str, Any]]) -> None:
        """Start from the heads a run stored before (a resumed run): new ones go after them."""
        self.heads, self._seen = [], set()
        for entry in heads:
            key = (str(entry["hospital"]), str(entry["head"]))
            if key not in self._seen:
                self._seen.add(key)
                self.heads.append(dict(entry))

    def resume(self, tracking_uri: str, run_id: str, checkpoint_heads: list[dict[str, Any]] | None = None) -> None:
        """Start from the heads a run stored before it stopped: its ``audit-heads.json``, else
        the copy in its last checkpoint (``checkpoint_heads``). Heads received after the resume
        go after them; a head received again is kept once."""
        stored = _artifact_heads(MlflowClient(tracking_uri=tracking_uri), run_id)
        self.restore(stored if stored is not None else list(checkpoint_heads or []))

    def save(self, tracker: Any) -> None:
        """Write the heads to the run's ``audit-heads.json`` when some arrived since the last write."""
        if self._unsaved:
            tracker.log_dict({"format": ANCHORS_FORMAT, "heads": self.heads}, HEADS_ARTIFACT)
            self._unsaved = False


def heads_recorder(heads: AuditHeads, identities: NodeIdentities) -> Callable[[str, int, int, Message], None]:
    """A SecAgg+ grid's reply recorder keeping the heads of its training replies, also those of
    a round that fails before the strategy reads its replies (a node claiming another
    hospital's name is left out, as everywhere)."""

    def record(stage: str, server_round: int, node: int, reply: Message) -> None:
        if reply.has_error():
            return
        site = reply.content.config_records.get("site")
        if site is None or "hospital-id" not in site:
            return
        hospital = str(site["hospital-id"])
        if identities.problem(node, hospital) is None:
            heads.add(hospital, "train", server_round, str(site.get("audit-head", "") or ""), str(site.get("status", "")))

    return record


def _artifact_heads(client: MlflowClient, run_id: str) -> list[dict[str, Any]] | None:
    """The heads in the run's ``audit-heads.json``; None when it has none or it is unreadable."""
    with tempfile.TemporaryDirectory(prefix="bioverse-heads-") as tmp:
        try:
            return list(json.loads(Path(client.download_artifacts(run_id, HEADS_ARTIFACT, tmp)).read_text())["heads"])
        except (MlflowException, OSError, ValueError, KeyError, TypeError) as err:
            log.info("run %s: no readable %s (%s)", run_id, HEADS_ARTIFACT, err)
            return None


def stored_heads(tracking_uri: str, run_id: str) -> list[dict[str, Any]]:
    """The heads a run stored: its ``audit-heads.json``, else its last checkpoint's copy.

    Raises:
        AuditLogError: no such run, or it stored no heads (its hospitals keep no audit log,
            or it ended before any reply).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise AuditLogError(f"no run {run_id} in {tracking_uri}: see `bioverse experiment runs`") from None
    heads = _artifact_heads(client, run_id)
    if heads is None:
        from federation.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(tracking_uri, run_id)
        heads = checkpoint.state.get("audit_heads") if checkpoint is not None else None
    if not heads:
        raise AuditLogError(f"run {run_id} holds no audit heads (its hospitals keep no audit log, or no reply came)")
    return list(heads)


def anchors_document(run_id: str, heads: list[dict[str, Any]], hospital: str | None = None) -> dict[str, Any]:
    """The anchors file a hospital is given: its heads in this run, in order (every hospital's
    under ``hospitals`` when none is named).

    Raises:
        AuditLogError: the run holds no head from ``hospital``.
    """
    exported = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fields = ("stage", "round", "head", "status", "received")
    by_hospital: dict[str, list[dict[str, Any]]] = {}
    for entry in heads:
        by_hospital.setdefault(str(entry["hospital"]), []).append({k: entry.get(k) for k in fields})
    if hospital is None:
        return {"format": ANCHORS_FORMAT, "run": run_id, "exported": exported, "hospitals": by_hospital}
    if hospital not in by_hospital:
        known = ", ".join(sorted(by_hospital)) or "none"
        raise AuditLogError(f"run {run_id} holds no audit heads from {hospital} (it holds heads from: {known})")
    return {"format": ANCHORS_FORMAT, "run": run_id, "exported": exported, "hospital": hospital,
            "heads": by_hospital[hospital]}
