"""The hospital's side of secure aggregation: Flower's own secaggplus_mod around the train handler."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE

__all__ = ["SECAGG_RECORD", "apply_mean_update", "secure_aggregation_mod", "update_vectors"]

log = logging.getLogger(__name__)

#: The config record that carries a SecAgg+ stage (Flower's name): its presence marks a masked round.
SECAGG_RECORD = RECORD_KEY_CONFIGS

#: What a hospital may send in the clear next to its masked vector (not the update).
_CLEAR_RECORDS = ("site", "metrics")


class _NotTrained(Exception):
    """The train handler answered without an update (refused, failed): nothing to mask."""


def update_vectors(global_arrays: ArrayRecord, local_arrays: ArrayRecord) -> list[np.ndarray]:
    """The hospital's update, ``local - global`` per array in the global model's key order."""
    if list(local_arrays.keys()) != list(global_arrays.keys()):
        raise ValueError("the trained model's arrays differ from the global model's")
    return [local_arrays[k].numpy().astype(np.float64) - global_arrays[k].numpy().astype(np.float64)
            for k in global_arrays]


def apply_mean_update(global_arrays: ArrayRecord, mean_update: list[np.ndarray]) -> ArrayRecord:
    """The global model moved by the federation's mean update, in the global model's dtypes."""
    out = OrderedDict()
    for key, delta in zip(global_arrays.keys(), mean_update, strict=True):
        base = global_arrays[key].numpy()
        moved = base.astype(np.float64) + np.asarray(delta, dtype=np.float64).reshape(base.shape)
        out[key] = Array(np.ascontiguousarray(moved.astype(base.dtype) if np.issubdtype(base.dtype, np.floating)
                                              else np.rint(moved).astype(base.dtype)))
    return ArrayRecord(out)


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Answer a SecAgg+ stage with Flower's ``secaggplus_mod``; the train handler runs in its
    masked stage and only the masked, DP-noised update leaves the hospital (its metrics and
    status travel in the clear). A plain train message in a run whose spec asks for secure
    aggregation is refused."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    if SECAGG_RECORD not in msg.content.config_records:
        refusal = _unmasked_refusal(msg, ctxt)
        return refusal if refusal is not None else call_next(msg, ctxt)
    trained: list[Message] = []
    try:
        out = secaggplus_mod(msg, ctxt, _masked_train(call_next, trained))
    except _NotTrained:
        return trained[0]  # the handler's refusal or error, with no update in it
    content = RecordDict({SECAGG_RECORD: out.content.config_records[SECAGG_RECORD]})
    if trained:
        for name in _CLEAR_RECORDS:
            if name in trained[0].content:
                content[name] = trained[0].content[name]
    return Message(content, reply_to=msg)


def _masked_train(call_next: ClientAppCallable, trained: list[Message]) -> ClientAppCallable:
    """The train handler, its reply reshaped as the legacy ``fitres`` that secaggplus_mod masks:
    the update (``local - global``) weighted by the hospital's number of examples."""

    def call(msg: Message, ctxt: Context) -> Message:
        reply = call_next(msg, ctxt)
        trained.append(reply)
        if reply.has_error() or "arrays" not in reply.content.array_records or not reply.content.metric_records:
            raise _NotTrained
        site = reply.content.config_records.get("site")
        if site is not None and site.get("status", "ok") != "ok":
            raise _NotTrained
        update = update_vectors(msg.content["arrays"], reply.content["arrays"])
        weight = int(round(float(next(iter(reply.content.metric_records.values()))["num-examples"])))
        _warn_if_clipped(ctxt, update, weight)
        return Message(RecordDict({
            "fitres.parameters": ArrayRecord(update),  # type: ignore[arg-type]
            "fitres.num_examples": MetricRecord({"num_examples": weight}),
            "fitres.metrics": ConfigRecord({}),
            "fitres.status": ConfigRecord({"code": 0, "message": ""}),
        }), reply_to=msg)

    return call


def _warn_if_clipped(ctxt: Context, update: list[np.ndarray], weight: int) -> None:
    """SecAgg+ clips the weighted update to its clipping range before quantising: say so."""
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    if state is None or not state.get("max_weight"):
        return
    scale = weight / float(state["max_weight"])  # type: ignore[arg-type]
    largest = max((float(np.abs(u).max()) for u in update if u.size), default=0.0) * scale
    if largest > float(state["clipping_range"]):  # type: ignore[arg-type]
        log.warning("secure aggregation clips this update (largest weighted entry %.3g > clipping range %s)",
                    largest, state["clipping_range"])


def _unmasked_refusal(msg: Message, ctxt: Context) -> Message | None:
    """A status refusing a plain (unmasked) train message when the run's spec asks for secure
    aggregation; None otherwise."""
    text = str(ctxt.run_config.get("spec", "") or "")
    if not text:
        return None
    from federation.site import spec_from_run_config

    spec = spec_from_run_config(dict(ctxt.run_config))
    if not spec.strategy.secure_aggregation:
        return None
    hospital = _hospital_id(ctxt.node_config, [h.id for h in spec.data.hospitals])
    reason = "the spec asks for secure aggregation but this train message is not masked (SecAgg+): refused"
    log.warning("%s: %s", hospital, reason)
    site = ConfigRecord({"hospital-id": hospital, "status": "refused", "reason": reason})
    return Message(RecordDict({"site": site}), reply_to=msg)


def _hospital_id(node_config: dict[str, Any] | Any, hospitals: list[str]) -> str:
    if "hospital-id" in node_config:
        return str(node_config["hospital-id"])
    partition = node_config.get("partition-id")
    if partition is not None and 0 <= int(partition) < len(hospitals):
        return hospitals[int(partition)]
    return f"partition-{partition}"
