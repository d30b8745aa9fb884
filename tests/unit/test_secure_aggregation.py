"""Secure aggregation's spec checks, thresholds, weight bound and update arithmetic."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from experiments.errors import SpecError
from experiments.spec import parse_spec
from federation.secure_aggregation import SecAggParams, reconstruction_threshold
from federation.secure_aggregation_mod import apply_mean_update, update_vectors
from tests.conftest import spec_dict


def test_spec_refuses_secure_aggregation_with_two_hospitals(hospital_files: list[Path]) -> None:
    spec = spec_dict(hospital_files[:2], strategy={"secure_aggregation": True})
    with pytest.raises(SpecError, match="secure_aggregation needs at least 3 hospitals"):
        parse_spec(spec)
    three = parse_spec(spec_dict(hospital_files, strategy={"name": "fedadam", "secure_aggregation": True}))
    assert three.strategy.secure_aggregation and three.strategy.name == "fedadam"
    assert not parse_spec(spec_dict(hospital_files)).strategy.secure_aggregation  # off unless asked


@pytest.mark.parametrize(("hospitals", "threshold"), [(3, 2), (4, 3), (5, 3), (10, 6), (30, 16)])
def test_threshold_is_a_strict_majority(hospitals: int, threshold: int) -> None:
    assert reconstruction_threshold(hospitals) == threshold
    assert hospitals - threshold >= 1  # one dropout survives from 3 hospitals on


def test_weight_bound_covers_the_largest_hospital() -> None:
    assert SecAggParams.for_counts({"a": [700, 300], "b": [90, 10]}).max_weight == 2000.0
    assert SecAggParams.for_counts({}).max_weight == SecAggParams().max_weight
    assert SecAggParams.for_counts({"a": [-3, 2]}).max_weight == 16.0  # noised counts stay a bound


def test_update_and_mean_update_round_trip() -> None:
    rng = np.random.default_rng(3)
    base = ArrayRecord(OrderedDict([("w", Array(rng.normal(size=(3, 2)).astype(np.float32))),
                                    ("steps", Array(np.array([4], dtype=np.int64)))]))
    local = ArrayRecord(OrderedDict([("w", Array((base["w"].numpy() + 0.25).astype(np.float32))),
                                     ("steps", Array(np.array([6], dtype=np.int64)))]))
    update = update_vectors(base, local)
    assert np.allclose(update[0], 0.25) and update[1].tolist() == [2.0]
    moved = apply_mean_update(base, update)
    assert moved["w"].numpy().dtype == np.float32 and np.allclose(moved["w"].numpy(), local["w"].numpy())
    assert moved["steps"].numpy().dtype == np.int64 and moved["steps"].numpy().tolist() == [6]
    other = ArrayRecord(OrderedDict([("v", Array(np.zeros((3, 2), dtype=np.float32)))]))
    with pytest.raises(ValueError, match="differ"):
        update_vectors(base, other)


@pytest.mark.usefixtures("flower_task_identity")
def test_hospital_refuses_an_unmasked_train_message_when_the_spec_asks_for_secure_aggregation(
        hospital_files: list[Path]) -> None:
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from federation.secure_aggregation_mod import secure_aggregation_mod
    from tests.conftest import spec_json

    called: list[Message] = []

    def handler(message: Message, context: Context) -> Message:
        called.append(message)
        return Message(RecordDict({"site": ConfigRecord({"hospital-id": "x", "status": "ok", "reason": ""})}),
                       reply_to=message)

    plain = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7,
                    message_type=MessageType.TRAIN)
    for secure, refused in ((True, True), (False, False)):
        spec = parse_spec(spec_dict(hospital_files, strategy={"secure_aggregation": secure}))
        ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                      run_config={"spec": spec_json(spec)})
        reply = secure_aggregation_mod(plain, ctx, handler)
        site = reply.content["site"]
        assert (site["status"] == "refused") == refused
        if refused:
            assert site["hospital-id"] == "hospital-02" and "not masked" in str(site["reason"])
    assert len(called) == 1  # the refused message never reached training
