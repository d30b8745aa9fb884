"""Issue 10 items 9 and 12: the statistics round is noised and charged (refused when the
budget is spent), and a budget belongs to (hospital, dataset), not to a hospital name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from federation import client_app
from federation.errors import BudgetExceededError
from federation.ledger import ANY_DATASET, PrivacyLedger
from tests.conftest import make_spec, spec_json
from training.dp_statistics import gaussian_noise_scale
from training.fingerprint import dataset_fingerprint
from training.imaging.dp_statistics import dp_pixel_statistics
from training.privacy import epsilon_after, noise_for_budget
from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.dp_statistics import dp_table_statistics
from training.tabular.preprocessing import local_statistics
from training.tabular.synth import FEATURE_RANGES

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _statistics(spec, node: dict, ledger_dir: Path, run_key: str = "r") -> Message:  # type: ignore[no-untyped-def]
    run_config = {"spec": spec_json(spec), "ledger-dir": str(ledger_dir), "tracking-uri": "", "progress-file": ""}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run_config)
    message = Message(RecordDict({"config": ConfigRecord({"run-key": run_key})}), dst_node_id=7, message_type=MessageType.QUERY)
    return client_app.statistics(message, ctx)


# ---- item 9: the statistics round releases noised, clipped statistics and pays for them ----

def test_statistics_are_noised_not_exact(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    node = {"partition-id": 0, "num-partitions": 3}
    first = json.loads(_statistics(spec, node, tmp_path, "r1").content["statistics"]["stats"])
    second = json.loads(_statistics(spec, node, tmp_path, "r2").content["statistics"]["stats"])
    frame = load_hospital_table(hospital_files[0], spec.data.contract)
    exact = local_statistics(frame, spec.data.contract)
    assert first["n"] != exact["n"] and first["n"] != second["n"]  # noised, afresh each time
    for column in spec.data.numeric:
        assert first["numeric"][column]["sum"] != second["numeric"][column]["sum"]
        centre = first["numeric"][column]["centre"]
        mean = centre + first["numeric"][column]["sum"] / first["numeric"][column]["count"]
        exact_mean = exact["numeric"][column]["sum"] / exact["numeric"][column]["count"]
        low, high = FEATURE_RANGES[column]
        assert abs(mean - exact_mean) < 0.15 * (high - low)  # noised, still usable
    assert first["dp"]["epsilon"] == spec.privacy.statistics_epsilon


def test_statistics_are_charged_every_time_and_refused_when_spent(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files, privacy={"hospital_budget": 2.5})
    node = {"partition-id": 0, "num-partitions": 3}
    ledger_path = tmp_path / "hospital-01.json"
    assert _statistics(spec, node, tmp_path).content["site"]["status"] == "ok"
    assert _statistics(spec, node, tmp_path).content["site"]["status"] == "ok"  # a repeat is a new release
    entry = PrivacyLedger(ledger_path, "hospital-01").entry("r/statistics")
    assert entry is not None and entry.kind == "statistics" and entry.epsilon == pytest.approx(2.0) and entry.steps == 2
    before = ledger_path.read_bytes()
    refused = _statistics(spec, node, tmp_path)
    site = refused.content["site"]
    assert site["status"] == "refused" and "budget exhausted" in site["reason"]
    assert "statistics" not in refused.content and ledger_path.read_bytes() == before


def test_statistics_share_the_training_budget(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files, privacy={"hospital_budget": 3.0})
    node = {"partition-id": 0, "num-partitions": 3}
    _statistics(spec, node, tmp_path)
    ledger = PrivacyLedger(tmp_path / "hospital-01.json", "hospital-01", dataset_fingerprint(hospital_files[0]))
    with pytest.raises(BudgetExceededError):  # 1.0 spent on statistics + 2.5 > 3
        ledger.charge(run="r", experiment="e", epsilon=2.5, delta=1e-5, steps=1, budget=3.0)
    ledger.charge(run="r", experiment="e", epsilon=1.9, delta=1e-5, steps=1, budget=3.0)


def test_clipping_bounds_one_patient_and_noise_matches_the_mechanism() -> None:
    contract = DataContract("id", "y", ("x",), ("c",))
    frame = pd.DataFrame({"id": [str(i) for i in range(400)], "y": [0] * 400, "x": np.linspace(0, 10, 400),
                          "c": ["a"] * 399 + ["rare"]})
    outlier = pd.concat([frame, pd.DataFrame({"id": ["z"], "y": [0], "x": [1e12], "c": ["a"]})], ignore_index=True)
    calm = [dp_table_statistics(frame, contract, {"x": (0.0, 10.0)}, epsilon=1e3, delta=1e-5) for _ in range(50)]
    wild = [dp_table_statistics(outlier, contract, {"x": (0.0, 10.0)}, epsilon=1e3, delta=1e-5) for _ in range(50)]
    shift = np.mean([w["numeric"]["x"]["sum"] for w in wild]) - np.mean([c["numeric"]["x"]["sum"] for c in calm])
    assert abs(shift - 5.0) < 1.0  # the 1e12 patient moved the centred sum by at most half the range
    assert all("rare" not in c["categorical"]["c"] for c in calm)  # a one-patient value is never released
    scale = gaussian_noise_scale(epsilon=1.0, delta=1e-5 / 2, coordinates=5)
    ns = [dp_table_statistics(frame, contract, {"x": (0.0, 10.0)}, epsilon=1.0, delta=1e-5)["n"] - 400 for _ in range(400)]
    assert 0.8 * scale < float(np.std(ns)) < 1.2 * scale
    z = noise_for_budget(target_epsilon=1.0, delta=1e-5 / 2, sample_rate=1.0, steps=1)
    assert epsilon_after(noise_multiplier=z, sample_rate=1.0, steps=1, delta=1e-5 / 2) <= 1.0


def test_image_statistics_are_noised() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4000, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, size=4000)
    a = dp_pixel_statistics(images, labels, 3, epsilon=1.0, delta=1e-5)
    b = dp_pixel_statistics(images, labels, 3, epsilon=1.0, delta=1e-5)
    assert a["pixels"]["sum"] != b["pixels"]["sum"]
    mean = a["pixels"]["sum"][0] / a["pixels"]["pixels"]
    assert abs(mean - images.mean() / 255) < 0.05
    assert len(a["classes"]) == 3 and all(c >= 0 for c in a["classes"])


# ---- item 12: the budget belongs to the data, not to the hospital's name ----

def test_fingerprint_follows_the_rows_not_the_format(hospital_files: list[Path], tmp_path: Path) -> None:
    frame = pd.read_csv(hospital_files[0])
    shuffled = frame.sample(frac=1.0, random_state=3)[list(reversed(frame.columns))]
    shuffled.to_parquet(tmp_path / "export.parquet", index=False)
    assert dataset_fingerprint(tmp_path / "export.parquet") == dataset_fingerprint(hospital_files[0])
    changed = frame.copy()
    changed.loc[0, "age"] = changed.loc[0, "age"] + 1
    changed.to_csv(tmp_path / "changed.csv", index=False)
    assert dataset_fingerprint(tmp_path / "changed.csv") != dataset_fingerprint(hospital_files[0])
    assert dataset_fingerprint(hospital_files[1]) != dataset_fingerprint(hospital_files[0])


def test_unrelated_data_does_not_drain_the_budget_but_the_same_data_does(hospital_files: list[Path], tmp_path: Path) -> None:
    """The probe: experiments on other files drained the budget the quickstart then needed."""
    node = {"partition-id": 0, "num-partitions": 3}
    other = tmp_path / "scratch" / "hospital-01.csv"  # a data scientist's unrelated file, same hospital id
    other.parent.mkdir()
    pd.read_csv(hospital_files[1]).to_csv(other, index=False)
    scratch = make_spec([other, *hospital_files[1:]], name="scratch", privacy={"hospital_budget": 2.0})
    for run in ("s1", "s2"):
        assert _statistics(scratch, node, tmp_path, run).content["site"]["status"] == "ok"
    assert _statistics(scratch, node, tmp_path, "s3").content["site"]["status"] == "refused"  # that data's budget is spent
    quickstart = make_spec(hospital_files, name="quickstart", privacy={"hospital_budget": 2.0})
    assert _statistics(quickstart, node, tmp_path, "q1").content["site"]["status"] == "ok"  # other data: its own budget
    again = make_spec(hospital_files, name="another-experiment", privacy={"hospital_budget": 2.0})
    assert _statistics(again, node, tmp_path, "a1").content["site"]["status"] == "ok"
    refused = _statistics(again, node, tmp_path, "a2").content["site"]  # same data, other experiment: one budget
    assert refused["status"] == "refused"
    entries = PrivacyLedger(tmp_path / "hospital-01.json", "hospital-01").entries(every_dataset=True)
    assert {e.dataset for e in entries} == {dataset_fingerprint(other), dataset_fingerprint(hospital_files[0])}


def test_a_real_site_can_pin_its_dataset(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files, privacy={"hospital_budget": 1.5})
    ledger = tmp_path / "site.json"
    node = {"hospital-id": "st-marys", "data-path": str(hospital_files[0]), "ledger-path": str(ledger), "dataset-id": "cardiology-2025"}
    assert _statistics(spec, node, tmp_path, "r1").content["site"]["status"] == "ok"
    node["data-path"] = str(hospital_files[1])  # a new export of the same registry: the site says it is the same data
    assert _statistics(spec, node, tmp_path, "r2").content["site"]["status"] == "refused"
    assert {e.dataset for e in PrivacyLedger(ledger, "st-marys").entries()} == {"cardiology-2025"}


def test_old_ledgers_count_against_every_dataset(tmp_path: Path) -> None:
    path = tmp_path / "h1.json"
    path.write_text(json.dumps({"hospital_id": "h1", "runs": {"old": {"experiment": "e", "epsilon": 4.0, "delta": 1e-5,
                                                                       "steps": 3, "updated": 1.0}}}))
    for dataset in ("a" * 64, "b" * 64):
        ledger = PrivacyLedger(path, "h1", dataset)
        assert ledger.spent() == pytest.approx(4.0) and ledger.entries()[0].dataset == ANY_DATASET
    PrivacyLedger(path, "h1", "a" * 64).charge(run="new", experiment="e", epsilon=1.0, delta=1e-5, steps=1, budget=5)
    with pytest.raises(BudgetExceededError):
        PrivacyLedger(path, "h1", "a" * 64).charge(run="newer", experiment="e", epsilon=0.5, delta=1e-5, steps=1, budget=5)
    PrivacyLedger(path, "h1", "b" * 64).charge(run="newer", experiment="e", epsilon=0.5, delta=1e-5, steps=1, budget=5)


def test_image_statistics_round_is_noised_charged_and_usable(tmp_path: Path) -> None:
    from experiments.spec import parse_spec
    from training.imaging.data import load_image_split
    from training.imaging.preprocessing import ImagePreprocessor, pixel_statistics
    from training.imaging.synth import synthesize_image_hospitals

    folders = synthesize_image_hospitals(tmp_path / "data", n_hospitals=2, images_per_hospital=500, size=16, channels=1,
                                         classes=("normal", "nodule"), layout="folder", seed=2)
    spec = parse_spec({"name": "img", "data": {"modality": "images", "classes": ["normal", "nodule"], "image_size": 16,
                                               "hospitals": [{"id": p.name, "path": str(p)} for p in folders]},
                       "privacy": {"hospital_budget": 20.0}})
    node = {"partition-id": 0, "num-partitions": 2}
    reply = _statistics(spec, node, tmp_path / "ledgers", "img-run")
    assert reply.content["site"]["status"] == "ok", reply.content["site"]["reason"]
    stats = json.loads(reply.content["statistics"]["stats"])
    pre = ImagePreprocessor.from_statistics([stats["pixels"]], size=16, channels=1, classes=("normal", "nodule"))
    exact = pixel_statistics(load_image_split(folders[0], spec.data.contract, spec.data.test_fraction, spec.seed).train_images)
    assert stats["pixels"]["sum"] != exact["sum"]
    assert abs(pre.mean[0] - exact["sum"][0] / exact["pixels"]) < 0.1
    entry = PrivacyLedger(tmp_path / "ledgers" / f"{folders[0].name}.json", folders[0].name).entry("img-run/statistics")
    assert entry is not None and entry.epsilon == pytest.approx(1.0) and entry.dataset == dataset_fingerprint(folders[0])


def test_a_site_policy_can_refuse_the_statistics_round(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    ledger = tmp_path / "site.json"
    node = {"hospital-id": "st-marys", "data-path": str(hospital_files[0]), "ledger-path": str(ledger), "statistics": "refuse"}
    site = _statistics(spec, node, tmp_path).content["site"]
    assert site["status"] == "refused" and "policy refuses the statistics round" in site["reason"]
    assert not ledger.exists()
    node["statistics"] = "exact"
    assert _statistics(spec, node, tmp_path).content["site"]["status"] == "error"  # a misconfigured site says so
