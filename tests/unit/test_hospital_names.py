"""Hospitals that fail mid-round are reported by their hospital id, not the SuperLink's node id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from experiments.spec_sections import StrategySpec
from experiments.tracking import RunTracker
from federation.coordinator import Coordinator
from federation.progress import ProgressLog
from federation.strategy import HospitalReply, build_strategy
from tests.conftest import make_spec

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class _Observer:
    def __init__(self) -> None:
        self.rounds: list[tuple[str, int, list[HospitalReply]]] = []

    def on_round(self, stage: str, server_round: int, replies: list[HospitalReply], aggregated: dict[str, Any]) -> None:
        self.rounds.append((stage, server_round, replies))


def _sent(node: int, message_id: str) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="evaluate")
    msg.metadata.__dict__["_message_id"] = message_id  # as the grid sets it when it pushes
    msg.metadata.__dict__["_src_node_id"] = 1
    return msg


def _ok(to: Message, hospital: str) -> Message:
    content = RecordDict({"site": ConfigRecord({"hospital-id": hospital, "status": "ok", "reason": ""}),
                          "metrics": MetricRecord({"num-examples": 10.0, "auroc": 0.7})})
    return Message(content, reply_to=to)


def test_unavailable_and_silent_hospitals_are_named_by_their_hospital_id() -> None:
    observer = _Observer()
    strategy = build_strategy(StrategySpec(min_hospitals=1), observer=observer, min_available=1, learning_rate=0.01)
    strategy.node_names.update({11: "hospital-01", 12: "hospital-02", 13: "hospital-03"})  # from the statistics round
    sent = [_sent(11, "m11"), _sent(12, "m12"), _sent(13, "m13")]
    strategy._sent = sent
    # the SuperLink answers for a node it lost: the error comes from the SuperLink's own node id (1)
    gone = create_message_error_unavailable_res_message(sent[1].metadata, "node_unavail")
    assert gone.metadata.src_node_id == 1
    strategy.aggregate_evaluate(1, [_ok(sent[0], "hospital-01"), gone])  # hospital-03 never answers
    ((stage, _, replies),) = observer.rounds
    by_id = {r.hospital_id: r for r in replies}
    assert stage == "evaluate" and set(by_id) == {"hospital-01", "hospital-02", "hospital-03"}
    assert by_id["hospital-01"].status == "ok"
    assert by_id["hospital-02"].status == "failed" and by_id["hospital-02"].reason
    assert by_id["hospital-03"].status == "failed" and "no reply" in by_id["hospital-03"].reason
    assert not any(r.hospital_id.startswith("node-") for r in replies)


def test_the_final_table_leaves_out_a_hospital_whose_last_evaluation_never_came(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    coordinator = Coordinator(spec, RunTracker(f"sqlite:///{tmp_path / 'mlflow.db'}"), ProgressLog(None))
    coordinator.tracker.start(spec)
    ok = lambda hospital: HospitalReply(hospital, "ok", "", {"auroc": 0.8, "num-examples": 5.0})  # noqa: E731
    coordinator.on_round("evaluate", 1, [ok("hospital-01"), ok("hospital-02")], {})
    coordinator.on_round("evaluate", 2, [ok("hospital-01"), HospitalReply("hospital-02", "failed", "no reply")], {})
    coordinator.tracker.end("FINISHED")
    assert set(coordinator.final_eval) == {"hospital-01"}  # hospital-02's round-1 AUROC is not its final one


def test_a_node_claiming_another_hospitals_id_is_refused_and_never_aggregated(tmp_path: Path) -> None:
    from federation.node_identity import NodeIdentities

    identities = NodeIdentities(tmp_path / "no-coordinator-here")  # lookups of unknown nodes fail: the known map stays
    identities._known = {11: "hospital-01", 12: "hospital-02"}  # as the SuperLink's registered keys say
    observer = _Observer()
    strategy = build_strategy(StrategySpec(min_hospitals=1), observer=observer, min_available=1, learning_rate=0.01,
                              identities=identities)
    sent = [_sent(11, "m11"), _sent(12, "m12"), _sent(13, "m13")]
    strategy._sent = sent
    # node 12's key was admitted as hospital-02, but it speaks for hospital-01; node 13 was never admitted
    metrics = strategy.aggregate_evaluate(1, [_ok(sent[0], "hospital-01"), _ok(sent[1], "hospital-01"),
                                              _ok(sent[2], "hospital-03")])
    ((_, _, replies),) = observer.rounds
    by_id = {r.hospital_id: r for r in replies}
    assert by_id["hospital-01"].status == "ok"
    assert by_id["node-12"].status == "refused" and "admitted as hospital-02 but claims to be hospital-01" in by_id["node-12"].reason
    assert by_id["node-13"].status == "refused" and "not among the coordinator's admitted hospitals" in by_id["node-13"].reason
    assert metrics is not None and float(metrics["num-examples"]) == 10.0  # only the genuine hospital's reply counts
    assert strategy.node_names == {11: "hospital-01"}
