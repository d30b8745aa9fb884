"""The final model's clinical validation round: hospitals' held-out aggregates into the run's report."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from experiments.quality import QUALITY_WARNING_TAG, quality_warning
from experiments.report import write_report_artifacts
from experiments.tracking import VALIDATION_DIR, code_version
from federation.imbalance import choose_decision, decision_section, served_scale, total_counts
from federation.run_tags import validation_tags
from federation.strategy import remote_reason, reply_node
from training.modality import SERVED_KEY, VAL_KEY, Preprocessor

__all__ = ["validate_final"]

log = logging.getLogger(__name__)


def validate_final(coordinator: Any, grid: Grid, nodes: list[int], encoder: Preprocessor, model: Any, run_id: str) -> dict[str, str]:
    """The clinical validation report of the final model, from the hospitals' aggregates.

    Each hospital scores its held-out rows and returns counts only; the report and its
    artifacts (report.json, plots, model card, HTML) go to the run under
    ``validation/``. Returns the version tags that pin the report (its SHA-256).
    """
    spec = coordinator.spec
    started = time.perf_counter()
    # a multi-class model's served rule (the prior correction) is known before validation:
    # hospitals also count the confusion of the labels it serves on their test part
    scale = served_scale(spec, coordinator.class_counts, coordinator.class_weights)
    served = {"class-scale": json.dumps(scale)} if scale else {}
    messages = [
        Message(RecordDict({"config": ConfigRecord({"encoder": encoder.to_json(), "run-key": run_id, **served}),
                            "arrays": ArrayRecord(model.state_dict())}),
                dst_node_id=n, message_type=f"{MessageType.QUERY}.validate")
        for n in nodes
    ]
    parts, outcome = {}, {}
    names: dict[int, str] = getattr(coordinator, "node_names", {})
    replies = list(grid.send_and_receive(messages, timeout=spec.strategy.round_timeout))
    waiting = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    answered: set[int] = set()
    for msg in replies:
        node = reply_node(msg, waiting)
        answered.add(node)
        if msg.has_error():
            outcome[names.get(node, f"node-{node}")] = {"status": "failed", "reason": remote_reason(msg.error.reason)}
            continue
        site = msg.content["site"]
        hospital = str(site["hospital-id"])
        impostor = coordinator.identities.problem(node, hospital)
        if impostor:  # its counts are never merged into the report
            outcome[f"node-{node}"] = {"status": "refused", "reason": f"the coordinator refuses: {impostor}"}
            continue
        outcome[hospital] = {"status": str(site["status"]), "reason": remote_reason(str(site["reason"]))}
        coordinator.audit_heads.add(hospital, "validate", None, str(site.get("audit-head", "") or ""), str(site["status"]))
        if site["status"] == "ok":
            parts[hospital] = json.loads(str(msg.content["validation"]["aggregates"]))
    outcome.update({names.get(n, f"node-{n}"): {"status": "failed", "reason": "no reply within the round's timeout"}
                    for n in sorted(set(waiting.values()) - answered)})
    coordinator.participation["validation"] = outcome
    coordinator.audit_heads.save(coordinator.tracker)
    coordinator.progress.emit("validation", hospitals={h: o["status"] for h, o in outcome.items()},
                       reasons={h: o["reason"] for h, o in outcome.items() if o["reason"]})
    val_parts = {h: p.pop(VAL_KEY) for h, p in parts.items() if VAL_KEY in p}
    served_confusion = [p.pop(SERVED_KEY) for p in parts.values() if SERVED_KEY in p]
    coordinator.decision = choose_decision(spec, val_parts, total_counts(coordinator.class_counts), coordinator.class_weights)
    log.info("decision rule: %s (%s)", coordinator.decision.rule, coordinator.decision.source)
    if not parts:
        return {"validation.status": "missing", **coordinator.decision.tags()}
    merged, report = coordinator.modality.validation_report(spec, parts)
    report["decision"] = decision_section(coordinator.decision, merged, multiclass=coordinator.modality.multiclass_aggregates,
                                          served_confusion=served_confusion if scale else None)
    meta = {
        "model_name": spec.model_name, "version": "(assigned at registration)", "experiment": spec.name,
        "run_id": run_id, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "privacy": {"epsilon": max(coordinator.epsilon.values()) if coordinator.epsilon else None,
                    "delta": spec.privacy.target_delta if spec.privacy.enabled else 0.0,
                    "accountant": spec.privacy.accountant if spec.privacy.enabled else "none"},
        "strategy": spec.strategy.name, "rounds": coordinator.selection.rounds_text(), "hospitals": sorted(parts),
        "schema_fingerprints": dict(sorted(coordinator.fingerprints.items())), "code_version": code_version(),
        "model_kind": spec.model.kind,
        "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in coordinator.modality.model_hparams(spec).items()},
        "label": spec.data.label,
        **coordinator.modality.report_meta(spec, encoder, coordinator.class_counts),
    }
    with tempfile.TemporaryDirectory(prefix="bioverse-report-") as tmp:
        write_report_artifacts(report, meta, Path(tmp))
        coordinator.tracker.log_artifacts(Path(tmp), VALIDATION_DIR)
    tags = validation_tags(report, list(parts), coordinator.decision)
    coordinator.quality_warning = quality_warning(report)
    if coordinator.quality_warning is not None:
        tags[QUALITY_WARNING_TAG] = coordinator.quality_warning
        log.warning("quality floor: %s", coordinator.quality_warning)
    log.info("validation report from %d hospitals in %.2f s", len(parts), time.perf_counter() - started)
    return tags
