"""Strategies that tolerate absent hospitals, report who took part, and aggregate privacy."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from experiments.spec_sections import StrategySpec
from federation.errors import TooFewHospitalsError
from federation.node_identity import NodeIdentities

__all__ = ["CLIP_BOUND", "HospitalReply", "RoundObserver", "aggregate_metrics", "build_strategy", "remote_reason", "reply_node", "selection_parts"]

log = logging.getLogger(__name__)

#: Train-round config key and metric: adaptive clipping's bound, carried between rounds.
CLIP_BOUND = "clip-bound"

#: Metrics aggregated by their worst case rather than a weighted mean.
_MAX_KEYS = {"epsilon", "noise-multiplier", "train-seconds", "handler-seconds", "selection-epsilon"}
_MIN_KEYS = {"budget-left"}


@dataclass(frozen=True)
class HospitalReply:
    """One hospital's answer in one round."""

    hospital_id: str
    status: str  # ok | refused | error | failed
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    #: The head of the hospital's audit chain its reply carried (``site`` record's ``audit-head``).
    audit_head: str = ""


#: The longest reason relayed from a hospital (its error, as one line).
MAX_REASON = 200


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def remote_reason(text: str | None) -> str:
    """A hospital's error as one short line.

    Flower relays a ClientApp's exception as ``<class 'X'>:<'message'>``; in simulation
    the message of Ray's wrapping error holds the whole remote traceback (colour codes
    included), chained causes first. Keep the root cause's ``Name: message``, bounded.
    """
    text = _ANSI.sub("", str(text or "")).strip()
    found = re.fullmatch(r"<class '([^']+)'>:<'(.*)'>", text, flags=re.DOTALL)
    kind, text = (found.group(1).rsplit(".", 1)[-1], found.group(2)) if found else ("", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return kind
    traceback = any(line.startswith(("Traceback", 'File "')) for line in lines)
    causes = [m for m in (_EXCEPTION_LINE.match(line) for line in lines) if m] if traceback else []
    if causes:
        last = f"{causes[0].group(1).rsplit('.', 1)[-1]}: {causes[0].group(2)}"
    elif traceback:
        last = lines[-1]
    else:
        last = " ".join(lines)
        if kind and not last.startswith(kind) and ": " not in last[:60]:
            last = f"{kind}: {last}"
    return last if len(last) <= MAX_REASON else last[: MAX_REASON - 3] + "..."


class RoundObserver(Protocol):
    """Receives each round's outcome (the coordinator logs it to MLflow and progress)."""

    def on_round(self, stage: str, server_round: int, replies: list[HospitalReply], aggregated: dict[str, float]) -> None:
        """Called after aggregation of a train or evaluate round."""

    def on_round_start(self, server_round: int) -> None:
        """Called before a training round's messages go out (hospitals charge it on receipt)."""

    def on_selection(self, server_round: int, parts: dict[str, dict[str, Any]], arrays: ArrayRecord | None) -> bool:
        """Called after an evaluate round with the hospitals' val releases (hospital -> aggregates)
        and the round's global model; True stops training (early stopping). Optional."""

    def on_round_end(self, server_round: int, strategy: Strategy, arrays: ArrayRecord | None) -> None:
        """Called when a round is complete (after its evaluation), with the strategy and the
        round's global model (the coordinator checkpoints them). Optional."""


def aggregate_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of each metric over hospitals, skipping NaN; epsilon takes the max."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    keys = {k for m in metrics for k in m}
    out: dict[str, float] = {}
    for key in sorted(keys):
        pairs = [(float(m[key]), float(m.get(weighted_by_key, 1.0))) for m in metrics if key in m]
        pairs = [(v, w) for v, w in pairs if not math.isnan(v)]
        if not pairs:
            continue
        if key in _MAX_KEYS:
            out[key] = max(v for v, _ in pairs)
        elif key in _MIN_KEYS:
            out[key] = min(v for v, _ in pairs)
        elif key == weighted_by_key:
            out[key] = sum(v for v, _ in pairs)
        else:
            total = sum(w for _, w in pairs) or 1.0
            out[key] = sum(v * w for v, w in pairs) / total
    return MetricRecord(out)


def _classify(replies: Iterable[Message], need_arrays: bool, names: dict[int, str],
              sent: Iterable[Message] = (), identities: NodeIdentities | None = None) -> tuple[list[Message], list[HospitalReply]]:
    usable: list[Message] = []
    outcomes: list[HospitalReply] = []
    waiting = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    answered: set[int] = set()
    for msg in replies:
        node = reply_node(msg, waiting)
        answered.add(node)
        if msg.has_error():
            hospital = names.get(node, f"node-{node}")
            outcomes.append(HospitalReply(hospital, "failed", remote_reason(msg.error.reason) or "no reply"))
            continue
        site = msg.content.config_records.get("site")
        hospital = str(site["hospital-id"]) if site else names.get(node, f"node-{node}")
        impostor = identities.problem(node, hospital) if identities is not None else None
        if impostor:  # the node's key was admitted under another name (or not at all): never aggregated
            outcomes.append(HospitalReply(f"node-{node}", "refused", f"the coordinator refuses: {impostor}"))
            continue
        names[node] = hospital
        status = str(site["status"]) if site else "ok"
        head = str(site.get("audit-head", "") or "") if site else ""
        has_payload = bool(msg.content.metric_records) and (not need_arrays or bool(msg.content.array_records))
        if status != "ok" or not has_payload:
            outcomes.append(HospitalReply(hospital, status if status != "ok" else "error",
                                          remote_reason(str(site.get("reason", ""))) if site else "", audit_head=head))
            continue
        metrics = {k: float(v) for k, v in next(iter(msg.content.metric_records.values())).items()}
        outcomes.append(HospitalReply(hospital, "ok", "", metrics, head))
        usable.append(msg)
    outcomes += [HospitalReply(names.get(n, f"node-{n}"), "failed", "no reply within the round's timeout")
                 for n in sorted(set(waiting.values()) - answered)]
    return usable, sorted(outcomes, key=lambda o: o.hospital_id)


def reply_node(reply: Message, sent: dict[str, int]) -> int:
    """The node a reply speaks for: its sender, or, for the error the SuperLink itself sends
    when a node became unavailable (sender: the SuperLink), the node the message went to."""
    return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


class _Observed:
    """Mixin placed before a Flower strategy: filters, checks and reports replies."""

    observer: RoundObserver
    min_hospitals: int
    node_names: dict[int, str]
    #: Which hospital each node's key was admitted as (None outside a coordinator's SuperLink).
    identities: NodeIdentities | None = None

    #: Set when the observer's model selection stopped training early: the remaining
    #: rounds of Flower's loop send no messages (nothing is trained, charged or evaluated).
    stopped_after: int | None = None
    #: Set when a run resumes from a checkpoint: rounds up to it are already done (skipped).
    resume_after: int = 0
    #: Seconds a round waits for ``min_available_nodes`` hospitals to be connected (Flower's
    #: own wait has no timeout); then the run ends with TooFewHospitalsError.
    wait_timeout: float = 120.0
    _evaluated: ArrayRecord | None = None
    _sent: list[Message] = []  # noqa: RUF012 - replaced per round, never mutated
    #: Adaptive clipping: the hospitals' mean clipping bound at the end of the last round,
    #: sent as the next round's ``clip-bound`` (a function of DP releases: no privacy cost).
    clip_bound: float | None = None

    def _skipped(self, server_round: int) -> bool:
        return self.stopped_after is not None or server_round <= self.resume_after

    def _await_hospitals(self, server_round: int, grid: Grid) -> None:
        """Wait up to ``wait_timeout`` for ``min_available_nodes`` connected hospitals."""
        deadline = time.monotonic() + self.wait_timeout
        while len(nodes := list(grid.get_node_ids())) < self.min_available_nodes:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise TooFewHospitalsError(
                    f"round {server_round}: {len(nodes)} hospitals connected after waiting {self.wait_timeout:.0f} s, "
                    f"the minimum is {self.min_available_nodes}")  # type: ignore[attr-defined]
            time.sleep(0.2)

    def configure_train(self, server_round: int, *args: Any, **kwargs: Any) -> Iterable[Message]:
        if self._skipped(server_round):
            return []
        config = args[1] if len(args) > 1 else kwargs.get("config")
        if self.clip_bound is not None and config is not None:
            config[CLIP_BOUND] = self.clip_bound
        self._await_hospitals(server_round, args[2] if len(args) > 2 else kwargs["grid"])
        messages = self._sent = list(super().configure_train(server_round, *args, **kwargs))  # type: ignore[misc]
        start = getattr(self.observer, "on_round_start", None)
        if start is not None:
            start(server_round)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._skipped(server_round):
            return None, None
        usable, outcomes = _classify(replies, True, self.node_names, self._sent, self.identities)
        if len(usable) < self.min_hospitals:
            self.observer.on_round("train", server_round, outcomes, {})
            detail = "; ".join(f"{o.hospital_id} {o.status}: {o.reason}" for o in outcomes if o.status != "ok")
            raise TooFewHospitalsError(
                f"round {server_round}: {len(usable)} hospitals trained, the minimum is {self.min_hospitals}"
                + (f" ({detail})" if detail else "")
            )
        arrays, metrics = super().aggregate_train(server_round, usable)  # type: ignore[misc]
        if metrics and CLIP_BOUND in metrics and math.isfinite(float(metrics[CLIP_BOUND])):
            self.clip_bound = float(metrics[CLIP_BOUND])
        self.observer.on_round("train", server_round, outcomes, dict(metrics or {}))
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Iterable[Message]:
        if self._skipped(server_round):
            return []
        self._evaluated = arrays
        self._await_hospitals(server_round, args[1] if len(args) > 1 else kwargs["grid"])
        self._sent = list(super().configure_evaluate(server_round, arrays, *args, **kwargs))  # type: ignore[misc]
        return self._sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self._skipped(server_round):
            return None
        usable, outcomes = _classify(replies, False, self.node_names, self._sent, self.identities)
        # aggregate_metrics directly: Flower's FedAvg refuses replies whose metric keys differ,
        # as they do when some hospitals evaluate on a val part and others on their test part
        metrics = aggregate_metrics([m.content for m in usable], self.weighted_by_key) if usable else None  # type: ignore[attr-defined]
        self.observer.on_round("evaluate", server_round, outcomes, dict(metrics or {}))
        select = getattr(self.observer, "on_selection", None)
        if select is not None and select(server_round, selection_parts(usable, self.node_names), self._evaluated):
            self.stopped_after = server_round
            log.info("early stopping after round %d", server_round)
        end = getattr(self.observer, "on_round_end", None)
        if end is not None:  # the round is complete: the coordinator checkpoints it
            end(server_round, self, self._evaluated)
        return metrics


def selection_parts(replies: list[Message], names: dict[int, str]) -> dict[str, dict[str, Any]]:
    """The val releases in an evaluate round's usable replies, by hospital (unreadable ones skipped)."""
    parts: dict[str, dict[str, Any]] = {}
    for msg in replies:
        record = msg.content.config_records.get("selection")
        if record is None or "aggregates" not in record:
            continue
        site = msg.content.config_records.get("site")
        node = msg.metadata.src_node_id
        hospital = str(site["hospital-id"]) if site else names.get(node, f"node-{node}")
        try:
            parts[hospital] = json.loads(str(record["aggregates"]))
        except ValueError:
            log.warning("%s sent unreadable selection aggregates; left out", hospital)
    return parts


_BASES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam,
                                   "fedyogi": FedYogi}


def build_strategy(spec: StrategySpec, *, observer: RoundObserver, min_available: int, learning_rate: float,
                   identities: NodeIdentities | None = None) -> Strategy:
    """The spec's Flower strategy, wrapped to tolerate and report absent hospitals.

    Args:
        spec: Strategy section of the experiment spec.
        observer: Told the outcome of every round.
        min_available: Hospitals to wait for before a round starts.
        learning_rate: The hospitals' learning rate (FedAdam/FedYogi's ``eta_l``).
        identities: The admitted hospitals' node ids: a reply whose hospital id is not the name
            its node's key was admitted under is refused, never aggregated.
    """
    base = _BASES[spec.name]
    kwargs: dict[str, Any] = {
        "min_train_nodes": spec.min_hospitals,
        "min_evaluate_nodes": spec.min_hospitals,
        "min_available_nodes": min_available,
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }
    if spec.name == "fedprox":
        kwargs["proximal_mu"] = spec.proximal_mu
    if spec.name == "fedavgm":  # server_learning_rate: 1 - momentum under DP (experiments.dp_defaults)
        kwargs.update(server_learning_rate=spec.server_learning_rate, server_momentum=spec.server_momentum)
    if spec.name in ("fedadam", "fedyogi"):
        kwargs.update(eta=spec.server_learning_rate, eta_l=learning_rate, tau=spec.tau, beta_1=0.9, beta_2=0.99)
    cls = type(f"Tolerant{base.__name__}", (_Observed, base), {})
    strategy = cls(**kwargs)
    strategy.observer = observer
    strategy.min_hospitals = spec.min_hospitals
    strategy.node_names = {}
    strategy.identities = identities
    strategy.wait_timeout = spec.join_timeout
    return strategy
