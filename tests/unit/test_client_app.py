"""The hospital's ClientApp handlers, called directly as Flower's decorators allow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from federation import client_app
from federation.ledger import PrivacyLedger
from tests.conftest import make_spec, spec_json
from training.tabular.hospital import model_hparams
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder, merge_statistics

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _context(spec_text: str, node_config: dict, ledger_dir: Path) -> Context:
    run_config = {"spec": spec_text, "ledger-dir": str(ledger_dir), "tracking-uri": "", "progress-file": ""}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def _message(kind: str, content: dict) -> Message:
    return Message(RecordDict(content), dst_node_id=7, message_type=kind)


def _encoder(spec, contexts) -> FeatureEncoder:  # type: ignore[no-untyped-def]
    stats = []
    for ctx in contexts:
        reply = client_app.statistics(_message(MessageType.QUERY, {"config": ConfigRecord({"run-key": "r"})}), ctx)
        stats.append(json.loads(reply.content["statistics"]["stats"]))
    return FeatureEncoder.from_statistics(merge_statistics(stats), spec.data.contract)


def _train_message(spec, encoder: FeatureEncoder, run_key: str = "run-1") -> Message:  # type: ignore[no-untyped-def]
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))
    config = ConfigRecord({"encoder": encoder.to_json(), "run-key": run_key, "server-round": 1})
    return _message(MessageType.TRAIN, {"arrays": ArrayRecord(model.state_dict()), "config": config})


def test_simulated_hospital_trains_charges_its_ledger_and_evaluates(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    ctx = _context(spec_json(spec), {"partition-id": 1, "num-partitions": 3}, tmp_path / "ledgers")
    encoder = _encoder(spec, [ctx])
    reply = client_app.train(_train_message(spec, encoder), ctx)
    assert reply.content["site"]["hospital-id"] == "hospital-02" and reply.content["site"]["status"] == "ok"
    metrics = reply.content["metrics"]
    assert 0 < metrics["epsilon"] < spec.privacy.target_epsilon and metrics["num-examples"] > 0
    entry = PrivacyLedger(tmp_path / "ledgers" / "hospital-02.json", "hospital-02").entry("run-1")
    assert entry is not None and entry.epsilon == pytest.approx(metrics["epsilon"])
    evaluated = client_app.evaluate(
        _message(MessageType.EVALUATE, {"arrays": reply.content["arrays"], "config": ConfigRecord({"encoder": encoder.to_json()})}), ctx
    )
    assert 0.5 < evaluated.content["metrics"]["auroc"] <= 1.0


def test_deployed_hospital_refuses_past_its_budget(hospital_files: list[Path], tmp_path: Path) -> None:
    # issue 10 item 9 changed this test: the statistics round now costs privacy.statistics_epsilon
    # (1.0), so 3.5 spent earlier leaves room for it (4.5) but not for a training round
    spec = make_spec(hospital_files)
    ledger_path = tmp_path / "site" / "ledger.json"
    PrivacyLedger(ledger_path, "st-marys").charge(run="earlier", experiment="x", epsilon=3.5, delta=1e-5, steps=1, budget=5)
    node = {"hospital-id": "st-marys", "data-path": str(hospital_files[0]), "privacy-budget": 5.0, "ledger-path": str(ledger_path)}
    ctx = _context(spec_json(spec), node, tmp_path / "unused")
    encoder = _encoder(spec, [ctx])
    reply = client_app.train(_train_message(spec, encoder), ctx)
    site = reply.content["site"]
    assert site["hospital-id"] == "st-marys" and site["status"] == "refused"
    assert "budget exhausted" in site["reason"] and "arrays" not in reply.content
    assert PrivacyLedger(ledger_path, "st-marys").spent() == pytest.approx(4.5)


def test_broken_data_is_a_status_with_a_reason_not_a_crash(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    hospital_files[2].write_text("patient_id,age\nx,1\n")
    ctx = _context(spec_json(spec), {"partition-id": 2, "num-partitions": 3}, tmp_path / "ledgers")
    reply = client_app.statistics(_message(MessageType.QUERY, {"config": ConfigRecord({"run-key": "r"})}), ctx)
    assert reply.content["site"]["status"] == "error"
    assert "hospital-03.csv, column 'systolic_bp': missing required column" in reply.content["site"]["reason"]


def test_node_without_identity_is_reported(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    ctx = _context(spec_json(spec), {"partition-id": 9, "num-partitions": 10}, tmp_path)
    reply = client_app.statistics(_message(MessageType.QUERY, {"config": ConfigRecord({"run-key": "r"})}), ctx)
    assert reply.content["site"]["status"] == "error" and "simulation node 9 has no hospital" in reply.content["site"]["reason"]


@pytest.mark.parametrize("budget", ["inf", "nan", "-1", "0", "lots"])
def test_a_site_budget_that_is_not_a_positive_finite_epsilon_is_refused(hospital_files: list[Path], tmp_path: Path,
                                                                        budget: str) -> None:
    spec = make_spec(hospital_files)
    ledger = tmp_path / "site-ledger.json"
    node = {"hospital-id": "hospital-01", "data-path": str(hospital_files[0]), "privacy-budget": budget,
            "ledger-path": str(ledger)}
    reply = client_app.statistics(_message(MessageType.QUERY, {"config": ConfigRecord({"run-key": "r"})}),
                                  _context(spec_json(spec), node, tmp_path))
    assert reply.content["site"]["status"] == "error"
    assert "privacy-budget must be a positive, finite epsilon" in reply.content["site"]["reason"]
    assert not ledger.exists()  # nothing charged


@pytest.mark.parametrize("weights", ["[NaN, 1.0]", "[Infinity, 1.0]", "[-1.0, 2.0]", "[0, 1]", "[1.0]", "[true, 1.0]",
                                     "{\"0\": 1}", "not json"])
def test_forged_class_weights_are_refused_before_anything_is_charged_or_trained(
        weights: str, hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    ctx = _context(spec_json(spec), {"partition-id": 1, "num-partitions": 3}, tmp_path / "ledgers")
    encoder = _encoder(spec, [ctx])
    message = _train_message(spec, encoder)
    message.content["config"]["class-weights"] = weights
    reply = client_app.train(message, ctx)
    site = reply.content["site"]
    assert site["status"] == "error" and "class weights from the coordinator" in site["reason"], site["reason"]
    assert "arrays" not in reply.content
    assert PrivacyLedger(tmp_path / "ledgers" / "hospital-02.json", "hospital-02").entry("run-1") is None
