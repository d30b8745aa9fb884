"""Idempotent charges and replayed replies: a round asked twice is charged and released once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from federation import client_app
from federation.hospital import charge_round
from federation.ledger import PrivacyLedger
from federation.replay import ReplyStore
from federation.site import resolve_site
from tests.conftest import make_spec, spec_json
from training.tabular.hospital import model_hparams
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder, merge_statistics

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _context(spec_text: str, ledger_dir: Path) -> Context:
    run_config = {"spec": spec_text, "ledger-dir": str(ledger_dir), "tracking-uri": "", "progress-file": ""}
    node_config = {"partition-id": 0, "num-partitions": 3}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def _message(kind: str, content: dict) -> Message:
    return Message(RecordDict(content), dst_node_id=7, message_type=kind)


def test_a_round_asked_twice_is_charged_once_and_answered_with_the_same_update(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    ctx = _context(spec_json(spec), tmp_path / "ledgers")
    stats = client_app.statistics(_message(MessageType.QUERY, {"config": ConfigRecord({"run-key": "run-9"})}), ctx)
    encoder = FeatureEncoder.from_statistics(merge_statistics([json.loads(stats.content["statistics"]["stats"])]),
                                             spec.data.contract)
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))
    config = {"encoder": encoder.to_json(), "run-key": "run-9", "server-round": 1}
    ask = lambda: _message(MessageType.TRAIN, {"arrays": ArrayRecord(model.state_dict()),  # noqa: E731
                                               "config": ConfigRecord(dict(config))})
    ledger = PrivacyLedger(tmp_path / "ledgers" / "hospital-01.json", "hospital-01")
    first = client_app.train(ask(), ctx)
    assert first.content["site"]["status"] == "ok"
    after_first = ledger.entry("run-9")
    second = client_app.train(ask(), ctx)
    after_second = ledger.entry("run-9")
    assert after_first is not None and after_second is not None
    assert (after_second.epsilon, after_second.steps, after_second.rounds) == (after_first.epsilon, after_first.steps, 1)
    assert after_second.last_round == 1
    a, b = first.content["arrays"], second.content["arrays"]
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())  # the very same noised update, not a new one
    assert dict(second.content["metrics"]) == dict(first.content["metrics"])
    # the next round is new: trained and charged
    config["server-round"] = 2
    third = client_app.train(ask(), ctx)
    assert third.content["site"]["status"] == "ok"
    after_third = ledger.entry("run-9")
    assert after_third is not None and after_third.rounds == 2 and after_third.epsilon > after_first.epsilon
    # the evaluate round's selection release is replayed too
    evaluate = lambda: _message(MessageType.EVALUATE, {"arrays": third.content["arrays"],  # noqa: E731
                                                       "config": ConfigRecord(dict(config))})
    e1 = client_app.evaluate(evaluate(), ctx)
    spent = ledger.spent()
    e2 = client_app.evaluate(evaluate(), ctx)
    assert ledger.spent() == spent
    assert dict(e1.content["metrics"]) == dict(e2.content["metrics"])


def test_charge_round_is_idempotent_per_run_and_round(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    site = resolve_site({"partition-id": 1, "num-partitions": 3}, spec, str(tmp_path / "ledgers"))
    noise, first = charge_round(site, spec, 800, "run-1", 1)
    again_noise, again = charge_round(site, spec, 800, "run-1", 1)
    assert again_noise == noise and again["epsilon"] == first["epsilon"]
    _, second = charge_round(site, spec, 800, "run-1", 2)
    assert second["epsilon"] > first["epsilon"]
    entry = PrivacyLedger(site.ledger_path, site.hospital_id).entry("run-1")
    assert entry is not None and entry.rounds == 2 and entry.last_round == 2


def test_reply_store_keeps_the_last_reply_per_run_and_stage(tmp_path: Path) -> None:
    store = ReplyStore(tmp_path / "replies")
    content = RecordDict({"site": ConfigRecord({"hospital-id": "h", "status": "ok", "reason": ""}),
                          "arrays": ArrayRecord([np.arange(4.0)])})
    store.put("run", "train", 3, content)
    assert store.get("run", "train", 2) is None and store.get("run", "evaluate", 3) is None
    found = store.get("run", "train", 3)
    assert found is not None and found["site"]["hospital-id"] == "h"
    np.testing.assert_array_equal(next(iter(found["arrays"].values())).numpy(), np.arange(4.0))
    store.put("run", "train", 4, content)
    assert store.get("run", "train", 3) is None
