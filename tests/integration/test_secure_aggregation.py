"""SecAgg+ on Flower's simulation engine: the coordinator sees masked vectors, and their sum is the weighted mean."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from federation.secure_aggregation import SecAggParams, SecureAggregationGrid
from federation.secure_aggregation_mod import SECAGG_RECORD, secure_aggregation_mod

pytestmark = pytest.mark.integration

HOSPITALS = 4
SHAPES = {"layer.weight": (16, 8), "layer.bias": (16,), "out.weight": (1, 16)}


def _global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(OrderedDict((k, Array(rng.normal(0, 0.3, s).astype(np.float32))) for k, s in SHAPES.items()))


def hospital_update(partition: int, server_round: int, global_model: ArrayRecord) -> tuple[dict[str, np.ndarray], int]:
    """What hospital ``partition`` trains in a round: the global model plus its own (seeded) noise, as DP-SGD's
    noisy steps would move it, and its number of examples."""
    rng = np.random.default_rng(100 * server_round + partition)
    local = {k: (global_model[k].numpy() + rng.normal(0.05 * partition, 0.1, global_model[k].numpy().shape))
             .astype(np.float32) for k in SHAPES}
    return local, 40 * (partition + 1)


def _client_app() -> ClientApp:
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        server_round = int(message.content["config"]["server-round"])
        if partition == HOSPITALS - 1 and server_round == 2:
            raise RuntimeError("hospital-3 lost its disk")  # fails in the masked stage of round 2
        if partition == 2 and server_round == 1:  # refuses in the masked stage of round 1 (its status, no update)
            site = ConfigRecord({"hospital-id": "hospital-2", "status": "refused", "reason": "privacy budget exhausted"})
            return Message(RecordDict({"site": site}), reply_to=message)
        local, examples = hospital_update(partition, server_round, message.content["arrays"])
        reply = Message(RecordDict({
            "arrays": ArrayRecord(OrderedDict((k, Array(v)) for k, v in local.items())),
            "metrics": MetricRecord({"num-examples": float(examples), "partition": float(partition), "epsilon": 0.5}),
            "site": ConfigRecord({"hospital-id": f"hospital-{partition}", "status": "ok", "reason": ""}),
        }), reply_to=message)
        return reply

    return app


def _server_app(seen: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        def record(stage: str, server_round: int, node: int, reply: Message) -> None:
            seen.setdefault("replies", []).append((stage, server_round, node, reply))

        secure = SecureAggregationGrid(grid, SecAggParams(max_weight=400.0), recorder=record)
        nodes = []
        while len(nodes) < HOSPITALS:
            nodes = sorted(grid.get_node_ids())
        model = _global_model()
        for server_round in (1, 2):
            messages = [Message(RecordDict({"arrays": model, "config": ConfigRecord({"server-round": server_round})}),
                                dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
            seen[server_round] = list(secure.send_and_receive(messages, timeout=120))
        seen["model"] = model

    return app


@pytest.fixture(scope="module")
def secagg_run() -> dict[str, Any]:
    seen: dict[str, Any] = {}
    run_simulation(server_app=_server_app(seen), client_app=_client_app(), num_supernodes=HOSPITALS,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    assert 1 in seen and 2 in seen, "the ServerApp did not finish its rounds"
    return seen


def _expected_mean(partitions: list[int], server_round: int, model: ArrayRecord) -> dict[str, np.ndarray]:
    updates = [hospital_update(p, server_round, model) for p in partitions]
    total = sum(w for _, w in updates)
    return {k: sum(w * local[k].astype(np.float64) for local, w in updates) / total for k in SHAPES}


def _ok(replies: list[Message]) -> list[Message]:
    return [r for r in replies if not r.has_error() and r.content.array_records]


@pytest.mark.parametrize("server_round", [1, 2])
def test_aggregate_is_the_weighted_mean_within_quantisation_error(secagg_run: dict[str, Any], server_round: int) -> None:
    replies = _ok(secagg_run[server_round])
    partitions = sorted(int(next(iter(r.content.metric_records.values()))["partition"]) for r in replies)
    assert partitions == ([0, 1, 3] if server_round == 1 else [0, 1, 2])  # one of 4 left each round
    expected = _expected_mean(partitions, server_round, secagg_run["model"])
    step = 2 * 8.0 / 2**22 * 400.0 / 40  # one quantisation level of the smallest weighted update
    for reply in replies:  # every hospital's reply carries the same aggregate, and its own clear metrics
        arrays = reply.content["arrays"]
        for key in SHAPES:
            assert np.abs(arrays[key].numpy() - expected[key]).max() < 4 * step, key
    # the weighted mean, not the plain one: hospitals' weights differ
    plain = {k: np.mean([hospital_update(p, server_round, secagg_run["model"])[0][k] for p in partitions], axis=0)
             for k in SHAPES}
    assert max(np.abs(plain[k] - expected[k]).max() for k in SHAPES) > 100 * step


def test_dropouts_in_the_masked_stage_are_reported(secagg_run: dict[str, Any]) -> None:
    failed = [r for r in secagg_run[2] if r.has_error()]
    assert len(failed) == 1 and "lost its disk" in failed[0].error.reason
    refused = [r.content["site"] for r in secagg_run[1] if not r.has_error() and not r.content.array_records]
    assert [(s["hospital-id"], s["status"], s["reason"]) for s in refused] == [
        ("hospital-2", "refused", "privacy budget exhausted")]


def test_coordinator_sees_masked_vectors_that_match_no_hospitals_update(secagg_run: dict[str, Any]) -> None:
    model = secagg_run["model"]
    masked = [(rnd, reply) for stage, rnd, _, reply in secagg_run["replies"]
              if stage == Stage.COLLECT_MASKED_VECTORS and not reply.has_error()
              and Key.MASKED_PARAMETERS in reply.content.config_records.get(SECAGG_RECORD, {})]
    assert len(masked) == 2 * (HOSPITALS - 1)
    from flwr.common import bytes_to_ndarray

    for rnd, reply in masked:
        assert not reply.content.array_records  # no model, update or weights in the clear
        vector = [bytes_to_ndarray(b) for b in reply.content.config_records[SECAGG_RECORD][Key.MASKED_PARAMETERS]]
        flat = np.concatenate([v.ravel() for v in vector[1:]]).astype(np.float64)
        # masks are uniform modulo 2**32: values far beyond the 2**22 quantisation levels of an unmasked vector
        assert flat.max() > 2**30
        for partition in range(HOSPITALS):
            local, weight = hospital_update(partition, rnd, model)
            update = np.concatenate([(local[k] - model[k].numpy()).ravel() for k in SHAPES]).astype(np.float64)
            for candidate in (update, update * weight / 400.0, np.concatenate([local[k].ravel() for k in SHAPES])):
                quantised = (np.clip(candidate, -8, 8) + 8) * 2**22 / 16
                assert abs(np.corrcoef(flat, quantised)[0, 1]) < 0.5
                assert np.abs(flat - quantised).max() > 2**24
        weights = {round(hospital_update(p, rnd, model)[1] / 400.0 * 2**22) for p in range(HOSPITALS)}
        assert int(vector[0][0]) not in weights  # the weight is masked too
