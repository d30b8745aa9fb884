"""`registry validate` row and image selection (training/held_out.py and each modality's held_out.py): only held-out data is scored."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from experiments.spec import ExperimentSpec, parse_spec
from tests.conftest import make_spec
from training.errors import LocalValidationError
from training.fingerprint import dataset_fingerprint
from training.held_out import training_hospital
from training.imaging.data_check import image_split
from training.imaging.held_out import held_out_images
from training.imaging.synth import synthesize_image_hospitals
from training.tabular.data import load_split
from training.tabular.held_out import held_out_rows

CLASSES = ["normal", "nodule", "opacity"]


@pytest.fixture(scope="module")
def image_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    (folder,) = synthesize_image_hospitals(root / "f", n_hospitals=1, images_per_hospital=60, size=16, layout="folder")
    (npz,) = synthesize_image_hospitals(root / "n", n_hospitals=1, images_per_hospital=60, size=16, layout="npz")
    return {"folder": folder, "npz": npz}


def _image_spec(hospitals: dict[str, Path], **data: Any) -> ExperimentSpec:
    return parse_spec({"name": "x", "seed": 4, "strategy": {"min_hospitals": 1}, "data": {
        "modality": "images", "classes": CLASSES, "image_size": 16, "channels": 1, "metadata": ["sex"],
        "hospitals": [{"id": h, "path": str(p)} for h, p in hospitals.items()], **data}})


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_a_training_folder_is_scored_on_the_patients_its_run_held_out(image_sites: dict[str, Path], tmp_path: Path) -> None:
    site = _copy(image_sites["folder"], tmp_path / "site")
    spec = _image_spec({"h1": tmp_path / "elsewhere"}, val_fraction=0.2)  # the run saw it at another path
    tags = {"dataset.h1": dataset_fingerprint(site), "dataset.h2": "0" * 64}
    run = image_split(spec.data, site, spec.seed)  # type: ignore[arg-type]
    for given in (site, site / "labels.csv"):  # the folder or its labels.csv
        selected, held = held_out_images(given, spec, tags)
        assert held.hospital == "h1" and held.scored == len(run.test_labels) == len(selected.test_labels)
        assert held.excluded == len(run.train_labels) + len(run.val_labels) > 0
        np.testing.assert_array_equal(selected.test_images, run.test_images)
        assert "test part of the run's split of h1's patients (seed 4)" in held.sentence("images")
        assert selected.test_metadata is not None and len(selected.test_metadata["sex"]) == held.scored
        assert selected.test_patients == run.test_patients
    val, held = held_out_images(site, spec, tags, "val")
    np.testing.assert_array_equal(val.test_labels, run.val_labels)
    with pytest.raises(LocalValidationError, match="h1 trained this version on part of it; --part all"):
        held_out_images(site, spec, tags, "all")
    by_path = _image_spec({"h1": site})  # no dataset tags (a hospital's dataset-id): matched by the spec's path
    assert training_hospital(site, by_path, {}) == "h1"


def test_a_folder_the_registry_does_not_know_counts_every_image(image_sites: dict[str, Path], tmp_path: Path) -> None:
    mine = _copy(image_sites["folder"], tmp_path / "mine")
    (mine / "extra.txt").write_text("another dataset")  # other bytes: not the training folder
    spec = _image_spec({"h1": image_sites["folder"]}, val_fraction=0.2)
    selected, held = held_out_images(mine, spec, {"dataset.h1": dataset_fingerprint(image_sites["folder"])})
    assert held.hospital is None and held.scored == 60 and held.excluded == 0
    assert held.sentence("images") == ("scored 60 held-out images (every image: not one of this version's training "
                                       "datasets and no split in it); none excluded")
    assert selected.test_metadata is not None and len(selected.test_metadata["sex"]) == 60
    assert selected.test_patients is not None and len(selected.test_patients) == 60
    with pytest.raises(LocalValidationError, match="has no val part"):
        held_out_images(mine, spec, {}, "val")
    one = tmp_path / "one"  # a validator's folder of one patient: scored whole, no split attempted
    one.mkdir()
    labels = pd.read_csv(mine / "labels.csv", dtype=str)
    labels[labels["patient_id"] == labels["patient_id"].iloc[0]].to_csv(one / "labels.csv", index=False)
    shutil.copytree(mine / "images", one / "images")
    _, held = held_out_images(one, spec, {})
    assert held.scored == int((labels["patient_id"] == labels["patient_id"].iloc[0]).sum()) and held.excluded == 0


def test_a_npz_is_scored_on_its_test_part_only(image_sites: dict[str, Path]) -> None:
    npz = image_sites["npz"]
    spec = _image_spec({"h1": npz.parent / "other.npz"}, metadata=[])
    with np.load(npz) as raw:
        sizes = {p: len(raw[f"{p}_labels"]) for p in ("train", "val", "test")}
    selected, held = held_out_images(npz, spec, {})
    with np.load(npz) as raw:
        np.testing.assert_array_equal(selected.test_images[:, 0], raw["test_images"])  # exactly the test arrays
    assert held.scored == sizes["test"] and held.excluded == sizes["train"] + sizes["val"] and held.hospital is None
    assert "(the test part of the .npz)" in held.sentence("images")
    everything, held_all = held_out_images(npz, spec, {}, "all")  # not a training dataset: allowed, and said
    assert len(everything.test_labels) == held_all.scored == 60 and everything.test_patients is None  # a .npz has none and "every part of the .npz, --part all" in held_all.what
    trained = {"dataset.h1": dataset_fingerprint(npz)}
    _, held = held_out_images(npz, spec, trained)
    assert held.hospital == "h1" and "held out from h1's training" in held.what
    with pytest.raises(LocalValidationError, match="--part all would score the model on its own training images"):
        held_out_images(npz, spec, trained, "all")


def test_a_split_column_picks_the_test_images(image_sites: dict[str, Path], tmp_path: Path) -> None:
    site = _copy(image_sites["folder"], tmp_path / "site")
    labels = pd.read_csv(site / "labels.csv", dtype=str)
    patients = sorted(labels["patient_id"].unique())
    part = {p: ("TEST" if i % 4 == 0 else "Validation" if i % 4 == 1 else "train") for i, p in enumerate(patients)}
    labels["fold"] = labels["patient_id"].map(part)
    labels.to_csv(site / "labels.csv", index=False)
    spec = _image_spec({"h1": tmp_path / "elsewhere"}, split_column="fold")
    selected, held = held_out_images(site, spec, {})
    expected = int((labels["fold"] == "TEST").sum())
    assert held.scored == expected == len(selected.test_labels) and held.excluded == 60 - expected
    assert held.what == "the test part of labels.csv column 'fold'"
    plain = _copy(image_sites["folder"], tmp_path / "plain")  # a validator's labels.csv without the column
    assert held_out_images(plain, spec, {})[1].scored == 60


def test_a_training_table_is_scored_on_its_held_out_rows(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    first = hospital_files[0]
    tags = {f"dataset.{p.stem}": dataset_fingerprint(p) for p in hospital_files}
    frame, held = held_out_rows(first, spec, tags)
    test = load_split(first, spec.data.contract, spec.data.test_fraction, spec.seed).test
    assert held.hospital == first.stem and held.scored == len(test) == len(frame)
    assert held.excluded == len(pd.read_csv(first)) - len(test)
    assert sorted(frame[spec.data.patient_id]) == sorted(test[spec.data.patient_id])
    with pytest.raises(LocalValidationError, match="--part all would score the model on its own training rows"):
        held_out_rows(first, spec, tags, "all")
    mine = tmp_path / "mine.csv"
    pd.read_csv(first).head(50).to_csv(mine, index=False)  # other rows: a validator's own file
    frame, held = held_out_rows(mine, spec, tags)
    assert held.hospital is None and held.scored == 50 and held.excluded == 0 and len(frame) == 50


def test_a_table_with_a_split_column_is_scored_on_its_test_rows(hospital_files: list[Path], tmp_path: Path) -> None:
    frame = pd.read_csv(hospital_files[0])
    frame["part"] = ["Test" if i % 5 == 0 else "validation" if i % 5 == 1 else "train" for i in range(len(frame))]
    mine = tmp_path / "split.csv"
    frame.to_csv(mine, index=False)
    spec = make_spec(hospital_files, data={"split_column": "part"})
    scored, held = held_out_rows(mine, spec, {})
    expected = int((frame["part"] == "Test").sum())
    assert held.scored == expected == len(scored) and held.excluded == len(frame) - expected and held.hospital is None
    assert held.what == "the test rows of column 'part'"
    val, held_val = held_out_rows(mine, spec, {}, "val")
    assert held_val.scored == int((frame["part"] == "validation").sum()) == len(val)
    plain = make_spec(hospital_files, data={"val_fraction": 0.2})  # a training file's run had a val part
    tags = {f"dataset.{p.stem}": dataset_fingerprint(p) for p in hospital_files}
    run = load_split(hospital_files[1], plain.data.contract, plain.data.test_fraction, plain.seed, val_fraction=0.2)
    _, held = held_out_rows(hospital_files[1], plain, tags)
    assert held.scored == len(run.test) and held.excluded == len(run.train) + len(run.val) and len(run.val) > 0


def test_data_check_prints_each_image_hospitals_parts_and_where_its_split_came_from(
        image_sites: dict[str, Path], tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from platform_api.cli import app

    site = _copy(image_sites["folder"], tmp_path / "site")
    labels = pd.read_csv(site / "labels.csv", dtype=str)
    first = labels["patient_id"].iloc[0]
    labels["part"] = np.where(labels["patient_id"] == first, "test", "train")
    labels.to_csv(site / "labels.csv", index=False)
    spec = {"name": "x", "seed": 2, "strategy": {"min_hospitals": 1},
            "data": {"modality": "images", "classes": CLASSES, "image_size": 16, "val_fraction": 0.2,
                     "hospitals": [{"id": "plain", "path": str(image_sites["folder"])},
                                   {"id": "npz", "path": str(image_sites["npz"])}]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "plain: ok, " in text and "split from patients at random (test_fraction 0.2, val_fraction 0.2, seed 2)" in text
    with np.load(image_sites["npz"]) as raw:
        sizes = [len(raw[f"{p}_labels"]) for p in ("train", "val", "test")]
    assert f"npz: ok, {sizes[0]} training, {sizes[1]} val and {sizes[2]} held-out images" in text
    assert "split from the .npz's train/val/test arrays" in text
    spec["data"] |= {"split_column": "part", "hospitals": [{"id": "fixed", "path": str(site)}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    text = " ".join(result.output.split())
    n_test = int((labels["part"] == "test").sum())
    assert result.exit_code == 0 and f"fixed: ok, {60 - n_test} training, 0 val and {n_test} held-out images" in text
    assert "split from labels.csv column 'part'" in text


def test_registry_validate_refuses_an_unknown_part_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from platform_api.cli import app

    result = CliRunner().invoke(app, ["registry", "validate", "1", "--data", str(tmp_path), "--part", "train",
                                      "--model", "m", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "--part must be one of test, val, all, got 'train'" in lines[0]
