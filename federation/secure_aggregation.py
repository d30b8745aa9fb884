"""Secure aggregation on the Message API: Flower's SecAgg+ stages driven with Flower's primitives."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from federation.errors import TooFewHospitalsError
from federation.grid import DelegatingGrid
from federation.secure_aggregation_mod import SECAGG_RECORD, apply_mean_update
from federation.strategy import remote_reason

__all__ = ["SecAggParams", "SecureAggregationGrid", "reconstruction_threshold", "secure_grid"]

log = logging.getLogger(__name__)

#: Called with (stage, server round, node id, reply) for every reply a SecAgg+ stage receives.
ReplyRecorder = Callable[[str, int, int, Message], None]


def reconstruction_threshold(hospitals: int) -> int:
    """Shares needed to rebuild a hospital's secrets: a strict majority, at least 2. A round
    survives ``hospitals - threshold`` dropouts; fewer than ``threshold`` colluding parties
    (the coordinator with some hospitals) cannot unmask one hospital's update."""
    return max(2, hospitals // 2 + 1)


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+ quantisation (Flower's defaults but for the weight bound, set from the federation).

    Each hospital sends ``w / max_weight * update`` (``w``: its number of examples, ``update``:
    its DP-noised model minus the global model), clipped to ``[-clipping_range, clipping_range]``
    and quantised to ``quantization_range`` levels; masks are drawn modulo ``modulus_range``.
    """

    max_weight: float = 10_000.0
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32

    @classmethod
    def for_counts(cls, class_counts: Mapping[str, list[int]]) -> SecAggParams:
        """``max_weight``: twice the largest hospital's (DP-noised) row count, so that no
        weight exceeds it and quantisation keeps its precision; the default without counts."""
        sizes = [sum(max(int(c), 0) for c in counts) for counts in class_counts.values()]
        return cls(max_weight=float(max(2 * max(sizes), 16))) if sizes else cls()


def secure_grid(grid: Grid, spec: Any, class_counts: Mapping[str, list[int]]) -> Grid:
    """``grid`` with training rounds securely aggregated when the spec asks for it."""
    if not spec.strategy.secure_aggregation:
        return grid
    params = SecAggParams.for_counts(class_counts)
    log.info("secure aggregation (SecAgg+): max weight %g, clipping range %g, %d quantisation levels",
             params.max_weight, params.clipping_range, params.quantization_range)
    return SecureAggregationGrid(grid, params)


@dataclass
class _Round:
    server_round: int
    train: dict[int, Message]
    threshold: int
    active: set[int]
    left: dict[int, Message] = field(default_factory=dict)  # node -> the reply saying why it left
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    forward: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    masked: dict[int, Message] = field(default_factory=dict)
    sent: dict[int, str] = field(default_factory=dict)  # node -> id of the last stage message it was sent


class SecureAggregationGrid(DelegatingGrid):
    """Delegates to a grid, but runs each training round as Flower's SecAgg+ protocol.

    The train messages a Message-API strategy sends go out in the masked stage; the
    coordinator receives masked integer vectors only and unmasks their sum. The strategy
    then gets, from each hospital that took part, its clear status and metrics with the
    federation's weighted mean model, so its own step (FedAvg's mean, FedAvgM's momentum,
    FedAdam's and FedYogi's moments) applies to the securely aggregated mean.

    Args:
        grid: The grid to send through.
        params: Quantisation and weight bound.
        recorder: Called with every reply a SecAgg+ stage receives (tests, benchmarks).
    """

    def __init__(self, grid: Grid, params: SecAggParams | None = None, recorder: ReplyRecorder | None = None) -> None:
        super().__init__(grid)
        self.params = params or SecAggParams()
        self.recorder = recorder

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Training messages: a SecAgg+ round; anything else: sent as it is."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        train = {m.metadata.dst_node_id: m for m in messages}
        config = messages[0].content.config_records.get("config")
        server_round = int(config["server-round"]) if config is not None and "server-round" in config else 0
        if len(train) < 3:
            raise TooFewHospitalsError(f"round {server_round}: secure aggregation needs at least 3 hospitals, "
                                       f"{len(train)} were sampled")
        state = _Round(server_round, train, reconstruction_threshold(len(train)), set(train))
        self._setup(state, timeout)
        self._share_keys(state, timeout)
        total = self._collect_masked_vectors(state, timeout)
        mean = self._unmask(state, total, timeout)
        return self._replies(state, mean)

    # ---- the SecAgg+ stages (flwr.server.workflow.secure_aggregation.secaggplus_workflow) ----
    def _exchange(self, state: _Round, stage: str, configs: dict[int, dict[str, Any]], timeout: float | None,
                  content: Callable[[int], RecordDict] = lambda _: RecordDict()) -> dict[int, Message]:
        """Send each node its stage config; the answering nodes' replies. Nodes that fail or
        do not answer leave ``state.active`` (their reply, if any, kept in ``state.left``)."""
        messages = []
        for node, values in configs.items():
            body = content(node)
            body[SECAGG_RECORD] = ConfigRecord({Key.STAGE: stage, **values})
            messages.append(Message(body, dst_node_id=node, message_type=MessageType.TRAIN,
                                    group_id=str(state.server_round)))
        answered: dict[int, Message] = {}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        state.sent.update({m.metadata.dst_node_id: m.metadata.message_id for m in messages if m.metadata.message_id})
        for reply in replies:
            node = reply.metadata.src_node_id
            if self.recorder is not None:
                self.recorder(stage, state.server_round, node, reply)
            if not reply.has_error() and SECAGG_RECORD in reply.content.config_records:
                answered[node] = reply
            else:
                state.left[node] = reply
        if stage != Stage.UNMASK:
            state.active &= set(answered)
        return answered

    def _check(self, state: _Round, stage: str) -> None:
        if len(state.active) >= state.threshold:
            return
        reasons = "; ".join(_why(node, reply) for node, reply in sorted(state.left.items()))
        raise TooFewHospitalsError(
            f"round {state.server_round}: secure aggregation needs {state.threshold} of {len(state.train)} hospitals, "
            f"{len(state.active)} answered its {stage} stage" + (f" ({reasons})" if reasons else ""))

    def _setup(self, state: _Round, timeout: float | None) -> None:
        p = self.params
        setup = {Key.SAMPLE_NUMBER: len(state.train), Key.SHARE_NUMBER: len(state.train), Key.THRESHOLD: state.threshold,
                 Key.CLIPPING_RANGE: float(p.clipping_range), Key.TARGET_RANGE: int(p.quantization_range),
                 Key.MOD_RANGE: int(p.modulus_range), Key.MAX_WEIGHT: float(p.max_weight)}
        for node, reply in self._exchange(state, Stage.SETUP, dict.fromkeys(state.active, setup), timeout).items():
            record = reply.content.config_records[SECAGG_RECORD]
            state.keys[node] = (cast(bytes, record[Key.PUBLIC_KEY_1]), cast(bytes, record[Key.PUBLIC_KEY_2]))
        self._check(state, Stage.SETUP)

    def _share_keys(self, state: _Round, timeout: float | None) -> None:
        # every sampled hospital is every other's neighbour (SecAgg+ with num_shares = all)
        keys = {str(node): list(state.keys[node]) for node in state.active}
        replies = self._exchange(state, Stage.SHARE_KEYS, dict.fromkeys(state.active, keys), timeout)
        state.forward = {node: [] for node in state.active}
        for src, reply in replies.items():
            record = reply.content.config_records[SECAGG_RECORD]
            for dst, ciphertext in zip(cast(list[int], record[Key.DESTINATION_LIST]),
                                       cast(list[bytes], record[Key.CIPHERTEXT_LIST]), strict=True):
                if dst in state.forward and src in state.forward:
                    state.forward[dst].append((src, ciphertext))
        self._check(state, Stage.SHARE_KEYS)

    def _collect_masked_vectors(self, state: _Round, timeout: float | None) -> list[np.ndarray]:
        configs = {node: {Key.CIPHERTEXT_LIST: [c for _, c in state.forward[node]],
                          Key.SOURCE_LIST: [s for s, _ in state.forward[node]]} for node in state.active}

        def train_content(node: int) -> RecordDict:
            body = RecordDict()
            for name, record in state.train[node].content.items():
                body[name] = record
            return body

        replies = self._exchange(state, Stage.COLLECT_MASKED_VECTORS, configs, timeout, train_content)
        total: list[np.ndarray] | None = None
        for node, reply in replies.items():
            record = reply.content.config_records[SECAGG_RECORD]
            if Key.MASKED_PARAMETERS not in record:
                state.active.discard(node)
                state.left[node] = reply
                continue
            state.masked[node] = reply
            vector = [bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])]
            total = vector if total is None else parameters_addition(total, vector)
        self._check(state, Stage.COLLECT_MASKED_VECTORS)
        return parameters_mod(cast(list[np.ndarray], total), self.params.modulus_range)

    def _unmask(self, state: _Round, total: list[np.ndarray], timeout: float | None) -> list[np.ndarray]:
        """The weighted mean update: the masked sum minus every mask, rebuilt from shares."""
        p = self.params
        contributed = set(state.masked)
        dead = set(state.forward) - contributed  # shared keys, then sent no masked vector
        config = {Key.ACTIVE_NODE_ID_LIST: sorted(contributed), Key.DEAD_NODE_ID_LIST: sorted(dead)}
        replies = self._exchange(state, Stage.UNMASK, dict.fromkeys(contributed, config), timeout)
        shares: dict[int, list[bytes]] = {node: [] for node in contributed | dead}
        for reply in replies.values():
            record = reply.content.config_records[SECAGG_RECORD]
            for owner, share in zip(cast(list[int], record[Key.NODE_ID_LIST]),
                                    cast(list[bytes], record[Key.SHARE_LIST]), strict=True):
                if owner in shares:
                    shares[owner].append(share)
        short = sorted(node for node, found in shares.items() if len(found) < state.threshold)
        if short:
            raise TooFewHospitalsError(
                f"round {state.server_round}: secure aggregation could not unmask the sum: {len(replies)} hospitals "
                f"sent their key shares, {state.threshold} are needed")
        shape = get_parameters_shape(total)
        for node, found in shares.items():
            secret = combine_shares(found)
            if node in contributed:  # its private mask's seed
                total = parameters_subtraction(total, pseudo_rand_gen(secret, p.modulus_range, shape))
                continue
            for other in contributed:  # a dropped hospital's secret key: its pairwise masks
                shared = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(state.keys[other][0]))
                mask = pseudo_rand_gen(shared, p.modulus_range, shape)
                total = parameters_addition(total, mask) if node > other else parameters_subtraction(total, mask)
        q_weight, summed = factor_extract(parameters_mod(total, p.modulus_range))
        mean = dequantize(summed, p.clipping_range, p.quantization_range)
        offset = -(len(contributed) - 1) * p.clipping_range
        return [(vec + offset) * (p.quantization_range / float(q_weight)) for vec in mean]

    def _replies(self, state: _Round, mean: list[np.ndarray]) -> list[Message]:
        """Each contributing hospital's clear status and metrics with the mean model; the
        others' replies as they came (their failure or refusal)."""
        for node, message in state.train.items():
            # the train message went out as its last stage message: replies answer that id
            # (Flower itself sets ids so: flwr.server.superlink.linkstate.utils)
            answer = state.masked.get(node) or state.left.get(node)
            sent = answer.metadata.reply_to_message_id if answer is not None else state.sent.get(node, "")
            if sent:
                message.metadata.__dict__["_message_id"] = sent
        out = []
        for node, reply in sorted(state.masked.items()):
            arrays = apply_mean_update(cast(ArrayRecord, state.train[node].content["arrays"]), mean)
            body = RecordDict({"arrays": arrays})
            for name, record in reply.content.items():
                if name != SECAGG_RECORD:
                    body[name] = record
            reply = copy.copy(reply)  # as received stays as received (a recorder may hold it)
            reply.content = body
            out.append(reply)
        out.extend(reply for node, reply in sorted(state.left.items()) if node not in state.masked)
        log.info("round %d: securely aggregated %d hospitals' updates (%d left)", state.server_round,
                 len(state.masked), len(state.train) - len(state.masked))
        return out


def _why(node: int, reply: Message) -> str:
    if reply.has_error():
        return f"node {node}: {remote_reason(reply.error.reason)}"
    site = reply.content.config_records.get("site")
    if site is not None:
        return f"{site.get('hospital-id', node)} {site.get('status', '')}: {remote_reason(str(site.get('reason', '')))}"
    return f"node {node}: no SecAgg+ answer"
