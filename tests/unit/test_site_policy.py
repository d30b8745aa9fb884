"""The hospital's site policy: each rule refuses a run before any work, at the ClientApp, and the audit log records it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from experiments.spec import parse_spec
from federation import client_app
from federation.errors import SiteConfigError, SitePolicyRefusal
from federation.ledger import PrivacyLedger
from federation.site_audit import read_rows, spec_fingerprint, verify_log
from federation.site_policy import SitePolicy, check_policy, load_policy, run_epsilon
from tests.conftest import make_spec, spec_json
from tests.unit.test_spec_images import image_spec_dict

POLICY = SitePolicy(total_budget=10.0, max_epsilon_per_run=5.0, allowed_model_kinds=("logistic",),
                    allowed_strategies=("fedavg", "fedprox"), min_cell=10)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"model": {"kind": "mlp"}}, "model kind 'mlp'"),
    ({"strategy": {"name": "fedadam", "min_hospitals": 2}}, "strategy 'fedadam'"),
    ({"validation": {"min_cell": 5}}, "validation cells of 5 patients"),
    ({"privacy": {"enabled": True, "target_epsilon": 4.0}}, r"epsilon 6 for one run \(policy max_epsilon_per_run 5\)"),
    ({"privacy": {"enabled": False}}, "without differential privacy"),
    ({"privacy": {"enabled": True, "target_epsilon": None, "noise_multiplier": 1.0}}, "unknown before training"),
])
def test_each_rule_refuses_with_its_reason(hospital_files: list[Path], overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(SitePolicyRefusal, match=match):
        check_policy(POLICY, make_spec(hospital_files, **overrides), "h1")


def test_an_allowed_run_passes_and_the_budget_left_is_checked(hospital_files: list[Path]) -> None:
    spec = make_spec(hospital_files)
    assert run_epsilon(spec) == pytest.approx(2.0 + 1.0 + 1.0)
    check_policy(POLICY, spec, "h1", spent_elsewhere=6.0)
    with pytest.raises(SitePolicyRefusal, match="only 3.500 of its total budget 10 is left"):
        check_policy(POLICY, spec, "h1", spent_elsewhere=6.5)


def test_runs_on_images_are_refused_unless_the_policy_allows_images() -> None:
    spec = parse_spec(image_spec_dict())
    assert spec.modality.uses_images and spec.privacy.enabled
    policy = SitePolicy(total_budget=100.0, max_epsilon_per_run=100.0)
    with pytest.raises(SitePolicyRefusal, match=r"runs on images \(policy allow_images = false\)"):
        check_policy(policy, spec, "h1")
    check_policy(policy.model_copy(update={"allow_images": True}), spec, "h1")


def test_a_broken_policy_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(tomli_w.dumps({"policy": {"total_budget": 5.0, "min_cel": 3}}))
    with pytest.raises(SiteConfigError, match="policy.min_cel"):
        load_policy(path)
    with pytest.raises(SiteConfigError, match="unreadable"):
        load_policy(tmp_path / "missing.toml")


def _node(tmp_path: Path, data: Path, policy: SitePolicy) -> dict[str, Any]:
    config = tmp_path / "node.toml"
    config.write_text(tomli_w.dumps({"policy": policy.model_dump(exclude_none=True)}))
    return {"hospital-id": "h1", "data-path": str(data), "privacy-budget": policy.total_budget,
            "ledger-path": str(tmp_path / "ledger.json"), "audit-log": str(tmp_path / "audit.jsonl"),
            "policy-file": str(config)}


def _statistics(spec_text: str, node: dict[str, Any], run_key: str) -> Message:
    context = Context(run_id=9, node_id=7, node_config=node, state=RecordDict(),
                      run_config={"spec": spec_text, "launched-by": "key:abc/alice"})
    message = Message(RecordDict({"config": ConfigRecord({"run-key": run_key})}), dst_node_id=7, message_type=MessageType.QUERY)
    return client_app.statistics(message, context)


@pytest.mark.usefixtures("flower_task_identity")
def test_the_client_app_refuses_before_any_work_and_audits_both_outcomes(hospital_files: list[Path], tmp_path: Path) -> None:
    node = _node(tmp_path, hospital_files[0], POLICY)
    refused_spec = spec_json(make_spec(hospital_files, model={"kind": "mlp"}))
    reply = _statistics(refused_spec, node, "run-a")
    site = reply.content["site"]
    assert site["status"] == "refused" and "model kind 'mlp'" in site["reason"] and "statistics" not in reply.content
    assert PrivacyLedger(tmp_path / "ledger.json", "h1").entries() == []  # nothing charged, nothing computed
    accepted = _statistics(spec_json(make_spec(hospital_files)), node, "run-b")
    assert accepted.content["site"]["status"] == "ok" and "statistics" in accepted.content
    rows = read_rows(tmp_path / "audit.jsonl")
    assert [(r["run"], r["message"], r["outcome"]) for r in rows] == [("run-a", "statistics", "refused"),
                                                                        ("run-b", "statistics", "accepted")]
    assert "model kind 'mlp'" in rows[0]["reason"] and rows[0]["epsilon"] == 0.0
    assert rows[1]["epsilon"] == pytest.approx(1.0) and rows[1]["launcher"] == "key:abc/alice"
    assert rows[0]["spec"] == spec_fingerprint(refused_spec) and rows[1]["flower_run"] == "9"
    assert accepted.content["site"]["audit-head"] == rows[1]["hash"]
    assert verify_log(tmp_path / "audit.jsonl") == (2, [])
    assert json.loads(accepted.content["statistics"]["stats"])  # the accepted run got its statistics


def test_the_budget_follows_node_toml_without_a_restart(hospital_files: list[Path], tmp_path: Path) -> None:
    from federation.site import resolve_site

    node = _node(tmp_path, hospital_files[0], POLICY)
    spec = make_spec(hospital_files)
    assert resolve_site(node, spec).budget == 10.0
    Path(node["policy-file"]).write_text(tomli_w.dumps({"policy": {"total_budget": 3.5}}))
    assert resolve_site(node, spec).budget == 3.5


@pytest.mark.usefixtures("flower_task_identity")
def test_nothing_leaves_unaudited_and_a_crash_is_recorded(hospital_files: list[Path], tmp_path: Path) -> None:
    node = _node(tmp_path, hospital_files[0], SitePolicy(total_budget=10.0))
    spec_text = spec_json(make_spec(hospital_files))
    context = Context(run_id=9, node_id=7, node_config=node, state=RecordDict(), run_config={"spec": spec_text})
    with pytest.raises(KeyError):  # a train message without its config: the handler crashes
        client_app.train(Message(RecordDict({}), dst_node_id=7, message_type=MessageType.TRAIN), context)
    (row,) = read_rows(tmp_path / "audit.jsonl")
    assert (row["message"], row["outcome"]) == ("train", "error") and "KeyError" in row["reason"]
    (tmp_path / "audit.jsonl").unlink()
    (tmp_path / "audit.jsonl").mkdir()  # the log cannot be written
    reply = _statistics(spec_text, node, "run-c")
    assert reply.content["site"]["status"] == "error" and reply.content["site"]["reason"].startswith("audit log: ")
    assert "statistics" not in reply.content


def test_a_hospital_can_require_secure_aggregation(hospital_files: list[Path]) -> None:
    strict = POLICY.model_copy(update={"require_secure_aggregation": True})
    with pytest.raises(SitePolicyRefusal, match="without secure aggregation"):
        check_policy(strict, make_spec(hospital_files), "h1")
    check_policy(strict, make_spec(hospital_files, strategy={"secure_aggregation": True}), "h1")  # 3 hospitals: allowed
