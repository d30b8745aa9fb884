"""The coordinator's audit-chain heads as anchors: a hospital log rewritten after the fact, even re-hashed end to
end so that its own chain check passes, or cut short, fails `bioverse hospital audit verify --anchors`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from experiments.spec_sections import StrategySpec
from experiments.tracking import RunTracker
from federation.audit_heads import HEADS_ARTIFACT, AuditHeads, anchors_document, stored_heads
from federation.checkpoint import load_checkpoint
from federation.coordinator import Coordinator
from federation.errors import AuditLogError
from federation.node_config import NodeConfig, save_node_config
from federation.progress import ProgressLog
from federation.site_audit import GENESIS, AuditRow, append_row, load_anchors, row_hash, verify_anchors, verify_log
from federation.site_policy import SitePolicy
from federation.strategy import build_strategy
from platform_api.cli import app
from tests.conftest import make_spec

runner = CliRunner()
RUN = "a" * 32


def _row(i: int, run: str = RUN, message: str = "train") -> AuditRow:
    return AuditRow(run=run, round=str(i), message=message, spec="ab" * 32, launcher="os:alice", epsilon=0.25,
                    outcome="accepted", hospital="hospital-01")


@pytest.fixture()
def node(tmp_path: Path) -> Path:
    """A hospital's node folder whose log holds 8 rows: 6 for this run (anchored by the coordinator), 2 for another."""
    folder = tmp_path / "hospital-01"
    folder.mkdir()
    save_node_config(NodeConfig(
        hospital_id="hospital-01", coordinator="127.0.0.1:9092", ca_cert=folder / "ca.pem", private_key=folder / "node",
        public_key=folder / "node.pub", data_path=tmp_path / "data.csv", ledger_path=folder / "ledger.json",
        audit_log=folder / "audit.jsonl", policy=SitePolicy(total_budget=8.0)), folder / "node.toml")
    heads = AuditHeads()
    for i in range(8):
        head = append_row(folder / "audit.jsonl", _row(i, run=RUN if i % 4 != 3 else "b" * 32))
        if i % 4 != 3:  # the other run's rows are anchored by its own coordinator run, not this one
            heads.add("hospital-01", "statistics" if i == 0 else "train", i, head, "ok")
    heads.add("hospital-02", "train", 1, "f" * 64, "ok")  # another hospital's head: not in this file
    (folder / "anchors.json").write_text(json.dumps(anchors_document(RUN, heads.heads, "hospital-01")))
    (folder / "all.json").write_text(json.dumps(anchors_document(RUN, heads.heads)))
    return folder


def _rewrite(log: Path, rows: list[dict]) -> None:
    """What a careful forger does: every row re-numbered, re-linked and re-hashed, the head file rewritten, so
    that the log's own chain check passes."""
    prev = GENESIS
    for seq, row in enumerate(rows, start=1):
        row.update(seq=seq, prev=prev)
        row["hash"] = prev = row_hash(row)
    log.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    (log.parent / (log.name + ".head")).write_text(json.dumps({"rows": len(rows), "hash": prev}))
    assert verify_log(log) == (len(rows), []), "the forger's rewrite should pass the plain chain check"


def _rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _verify(node: Path, *anchors: str) -> tuple[int, list[str]]:
    args = [a for name in anchors for a in ("--anchors", str(node / name))]
    result = runner.invoke(app, ["hospital", "audit", "verify", "--dir", str(node), *args])
    assert "Traceback" not in result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_the_genuine_log_verifies_against_its_anchors(node: Path) -> None:
    assert _verify(node, "anchors.json") == (0, [f"{node / 'audit.jsonl'}: 8 rows, the chain holds; "
                                                 f"6 anchors of run {RUN[:12]} found in order"])
    assert _verify(node, "all.json")[0] == 0  # the file for every hospital: this hospital's part is used
    assert _verify(node) == (0, [f"{node / 'audit.jsonl'}: 8 rows, the chain holds"])  # without --anchors, as before


def test_a_rewritten_and_rehashed_log_fails_on_the_first_anchor_it_lost(node: Path) -> None:
    log = node / "audit.jsonl"
    rows = _rows(log)
    rows[4].update(epsilon=0.0, outcome="refused", reason="never trained")  # row 5 (anchor 4) said it spent 0.25
    _rewrite(log, rows)
    code, lines = _verify(node, "anchors.json")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {log}: anchor 4 (train round 4 of run {RUN[:12]}")
    assert "is not in the log: its rows were rewritten or removed (2 later anchors not checked)" in lines[0]
    assert _verify(node)[0] == 0  # the plain chain check alone is fooled


def test_a_truncated_log_with_a_rewritten_head_file_fails(node: Path) -> None:
    log = node / "audit.jsonl"
    _rewrite(log, _rows(log)[:5])  # rows 6-8 gone, the head file says 5 rows
    code, lines = _verify(node, "anchors.json")
    assert code == 1 and len(lines) == 1 and "anchor 5 (train round 5 of run" in lines[0], lines
    assert "(1 later anchors not checked)" in lines[0]


def test_rows_moved_and_rehashed_or_anchors_out_of_order_are_found(node: Path) -> None:
    anchors = load_anchors(node / "anchors.json", "hospital-01")
    swapped = type(anchors)(anchors.run, [anchors.heads[0], anchors.heads[2], anchors.heads[1], *anchors.heads[3:]])
    problem = verify_anchors(node / "audit.jsonl", swapped)
    assert problem is not None and problem.line == 2 and "anchor 3" in problem.what and "out of order" in problem.what
    other_run = type(anchors)("c" * 32, anchors.heads)
    problem = verify_anchors(node / "audit.jsonl", other_run)
    assert problem is not None and "answers run aaaaaaaaaaaa" in problem.what
    log = node / "audit.jsonl"
    rows = _rows(log)
    rows[1], rows[2] = rows[2], rows[1]
    _rewrite(log, rows)
    assert _verify(node, "anchors.json")[0] == 1


def test_anchors_files_that_are_not_for_this_hospital_or_not_anchors_are_one_line(node: Path) -> None:
    other = anchors_document(RUN, [{"hospital": "hospital-02", "stage": "train", "round": 1, "head": "f" * 64}],
                             "hospital-02")
    (node / "other.json").write_text(json.dumps(other))
    (node / "junk.json").write_text("{not json")
    for name, says in (("other.json", "holds no anchors for hospital-01 (it is for hospital-02)"),
                       ("junk.json", "not a readable anchors file"), ("missing.json", "not a readable anchors file")):
        code, lines = _verify(node, name)
        assert code == 1 and len(lines) == 1 and says in lines[0], lines
    with pytest.raises(AuditLogError, match="holds no audit heads from hospital-09"):
        anchors_document(RUN, [], "hospital-09")


def _reply(node_id: int, hospital: str, head: str, status: str) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node_id,
                   message_type=MessageType.EVALUATE)
    reply = Message(RecordDict({"site": ConfigRecord({"hospital-id": hospital, "status": status, "reason": "",
                                                     "audit-head": head}),
                                "metrics": MetricRecord({"num-examples": 10.0})}), reply_to=sent)
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


@pytest.mark.usefixtures("flower_task_identity")
def test_the_coordinator_keeps_heads_in_the_run_and_a_resumed_run_neither_loses_nor_duplicates_them(
        hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def evaluate(coordinator: Coordinator, server_round: int, *replies: tuple[int, str, str, str]) -> None:
        """An evaluate round's replies through the strategy, as the coordinator's strategy reads them."""
        observer = type("Observer", (), {"on_round": staticmethod(coordinator.on_round)})()
        strategy = build_strategy(StrategySpec(min_hospitals=1), observer=observer, min_available=1, learning_rate=0.01)
        strategy.aggregate_evaluate(server_round, [_reply(*r) for r in replies])

    coordinator = Coordinator(spec, RunTracker(uri), ProgressLog(None))
    run_id = coordinator.tracker.start(spec)
    for server_round in (1, 2):
        evaluate(coordinator, server_round, (11, "hospital-01", f"{server_round}a", "ok"),
                 (12, "hospital-02", f"{server_round}b", "refused"))
    evaluate(coordinator, 2, (11, "hospital-01", "2a", "ok"))  # the same reply again: kept once
    coordinator.tracker.end("FAILED")  # the coordinator dies
    stored = stored_heads(uri, run_id)
    assert [(h["hospital"], h["stage"], h["round"], h["head"], h["status"]) for h in stored] == [
        ("hospital-01", "evaluate", 1, "1a", "ok"), ("hospital-02", "evaluate", 1, "1b", "refused"),
        ("hospital-01", "evaluate", 2, "2a", "ok"), ("hospital-02", "evaluate", 2, "2b", "refused")]
    resumed = Coordinator(spec, RunTracker(uri), ProgressLog(None), resume_run=run_id)
    resumed.tracker.run_id = run_id  # as reopen_run sets it
    resumed.audit_heads.resume(uri, run_id, [])  # as Coordinator.run does after reopening the run
    evaluate(resumed, 2, (11, "hospital-01", "2a", "ok"))  # round 2 asked again and replayed
    evaluate(resumed, 3, (11, "hospital-01", "3a", "ok"))
    assert [h["head"] for h in stored_heads(uri, run_id)] == ["1a", "1b", "2a", "2b", "3a"]
    exported = runner.invoke(app, ["coordinator", "audit-heads", run_id, "--hospital", "hospital-01", "--tracking-uri",
                                   uri, "--out", str(tmp_path / "h1.json")])
    assert exported.exit_code == 0 and f"3 heads from hospital-01 in run {run_id}" in exported.output, exported.output
    document = json.loads((tmp_path / "h1.json").read_text())
    assert document["run"] == run_id and [h["head"] for h in document["heads"]] == ["1a", "2a", "3a"]
    assert json.loads(Path(MlflowClient(uri).download_artifacts(run_id, HEADS_ARTIFACT, str(tmp_path))).read_text())[
        "format"] == "bioverse-audit-anchors/1"
    assert load_checkpoint(uri, run_id) is None  # no round was checkpointed: the artifact alone held them
    torn = AuditHeads()  # a run whose audit-heads.json cannot be read resumes from its checkpoint's copy
    other = RunTracker(uri)
    torn.resume(uri, other.start(spec), stored[:2])
    other.end("FAILED")
    assert torn.heads == stored[:2]
    for args, says in ((["0" * 32], "no run 00000000"), ([run_id, "--hospital", "hospital-09"], "no audit heads from")):
        failed = runner.invoke(app, ["coordinator", "audit-heads", *args, "--tracking-uri", uri])
        lines = [line for line in failed.output.splitlines() if line.strip()]
        assert failed.exit_code == 1 and len(lines) == 1 and says in lines[0], failed.output
