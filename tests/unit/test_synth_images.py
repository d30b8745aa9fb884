"""Synthetic imaging hospitals (training.imaging.synth) and `bioverse data synth-images`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from platform_api.cli import app
from training.imaging.data import ImageContract, load_image_split
from training.imaging.preprocessing import class_counts
from training.imaging.splits import ImageSplit
from training.imaging.synth import synthesize_image_hospitals

CLASSES = ("normal", "nodule", "opacity")
CONTRACT = ImageContract(CLASSES, size=28, channels=1)
runner = CliRunner()


@pytest.fixture(scope="module")
def folder_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_image_hospitals(tmp_path_factory.mktemp("sites"), seed=5)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_folder_layout_writes_labelled_png_and_jpeg_sites(folder_sites: list[Path]) -> None:
    assert [p.name for p in folder_sites] == ["hospital-01", "hospital-02", "hospital-03"]
    for index, site in enumerate(folder_sites, start=1):
        labels = pd.read_csv(site / "labels.csv")
        assert list(labels.columns) == ["image", "patient_id", "label", "sex", "age"] and len(labels) == 240
        assert set(labels["sex"]) == {"F", "M"} and labels["age"].between(30, 89).all()
        assert (labels.groupby("patient_id")[["sex", "age"]].nunique() == 1).all().all()  # per patient, not per image
        assert set(labels["label"]) == set(CLASSES)
        assert labels["image"].is_unique and labels.groupby("patient_id")["label"].nunique().max() == 1
        assert labels["patient_id"].value_counts().max() > 1  # several images per patient
        magic = (site / labels["image"].iloc[0]).read_bytes()[:3]
        assert magic == (b"\xff\xd8\xff" if index == 2 else b"\x89PN")
    truth = json.loads((folder_sites[0].parent / "ground_truth.json").read_text())
    assert truth["hospitals"]["hospital-02"]["format"] == "JPEG" and truth["patterns"]["nodule"] == "blob"


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        synthesize_image_hospitals(tmp_path / name, n_hospitals=2, images_per_hospital=30, seed=seed)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def _pooled(splits: list[ImageSplit]) -> tuple[np.ndarray, ...]:
    def flat(images: list[np.ndarray]) -> np.ndarray:  # 2x2 average-pooled pixels (14x14), in [0, 1]
        stacked = np.concatenate(images).astype(np.float64) / 255.0
        return stacked.reshape(len(stacked), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(stacked), -1)

    return (flat([s.train_images for s in splits]), np.concatenate([s.train_labels for s in splits]),
            flat([s.test_images for s in splits]), np.concatenate([s.test_labels for s in splits]))


def test_classes_are_learnable_from_pixels_by_a_linear_model(folder_sites: list[Path]) -> None:
    splits = [load_image_split(site, CONTRACT) for site in folder_sites]
    x_train, y_train, x_test, y_test = _pooled(splits)
    accuracy = LogisticRegression(C=0.1, max_iter=500).fit(x_train, y_train).score(x_test, y_test)
    majority = np.bincount(y_test).max() / len(y_test)
    assert accuracy > majority + 0.15, (accuracy, majority)


def test_sites_differ_in_appearance_and_prevalence(folder_sites: list[Path]) -> None:
    splits = [load_image_split(site, CONTRACT) for site in folder_sites]
    normal_brightness = [s.train_images[s.train_labels == 0].mean() for s in splits]
    assert max(normal_brightness) - min(normal_brightness) > 5  # scanner shift, same class
    prevalence = [np.asarray(class_counts(np.concatenate([s.train_labels, s.test_labels]), 3)) / 240 for s in splits]
    assert max(np.abs(p - prevalence[0]).max() for p in prevalence[1:]) > 0.05
    nodules = np.concatenate([s.train_images[s.train_labels == 1] for s in splits]).reshape(-1, 784)
    normals = np.concatenate([s.train_images[s.train_labels == 0] for s in splits]).reshape(-1, 784)
    assert np.percentile(nodules.max(axis=1), 50) > np.percentile(normals.max(axis=1), 50) + 20  # a bright blob


def test_npz_layout_is_medmnist_and_loads(tmp_path: Path) -> None:
    paths = synthesize_image_hospitals(tmp_path, n_hospitals=2, images_per_hospital=60, size=32, channels=3,
                                       layout="npz", seed=3)
    assert [p.name for p in paths] == ["hospital-01.npz", "hospital-02.npz"]
    with np.load(paths[0]) as npz:
        assert sorted(npz.files) == sorted(f"{part}_{kind}" for part in ("train", "val", "test")
                                           for kind in ("images", "labels"))
        assert npz["train_images"].shape[1:] == (32, 32, 3) and npz["train_images"].dtype == np.uint8
        assert npz["test_labels"].ndim == 2 and npz["test_labels"].shape[1] == 1
        assert sum(len(npz[f"{part}_labels"]) for part in ("train", "val", "test")) == 60
        colours = npz["train_images"].reshape(-1, 3).mean(axis=0)
        assert np.ptp(colours) > 1  # a per-site tint
    split = load_image_split(paths[1], ImageContract(CLASSES, size=32, channels=3))
    assert split.train_images.shape[1:] == (3, 32, 32) and sum(split.counts().values()) == 60
    assert split.source == "npz" and len(split.val_images) > 0  # the val arrays are their own part
    again = synthesize_image_hospitals(tmp_path / "again", n_hospitals=2, images_per_hospital=60, size=32, channels=3,
                                       layout="npz", seed=3)
    assert again[0].read_bytes() == paths[0].read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_hospitals": 0}, "n_hospitals must be >= 1"),
        ({"images_per_hospital": 5}, "images_per_hospital must be >= 20"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"classes": ("only",)}, "classes must be 2 to 6 distinct"),
        ({"classes": ("a", "a")}, "classes must be 2 to 6 distinct"),
        ({"layout": "zip"}, "layout must be one of ['folder', 'npz']"),
        ({"size": 4}, "size must be between 8 and 512"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        synthesize_image_hospitals(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert expected in str(excinfo.value)
    assert not any(tmp_path.iterdir())


def test_cli_writes_sites_and_reports_where(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "synth-images", "--out", str(tmp_path), "--hospitals", "2", "--images", "24",
                                 "--classes", "clear, mass", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "hospital-01" in result.output and "24 images" in result.output and str(tmp_path) in result.output
    labels = pd.read_csv(tmp_path / "hospital-02" / "labels.csv")
    assert set(labels["label"]) <= {"clear", "mass"} and len(labels) == 24
    result = runner.invoke(app, ["data", "synth-images", "--out", str(tmp_path / "z"), "--images", "24",
                                 "--layout", "npz", "--size", "16", "--channels", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "z" / "hospital-03.npz").is_file()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--layout", "zip"], "layout must be one of"),
        (["--channels", "2"], "channels must be 1 or 3"),
        (["--classes", "normal"], "classes must be 2 to 6"),
        (["--hospitals", "0"], "n_hospitals must be >= 1"),
    ],
)
def test_cli_bad_options_print_one_line(tmp_path: Path, option: list[str], expected: str) -> None:
    result = runner.invoke(app, ["data", "synth-images", "--out", str(tmp_path), *option])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_imbalanced_sites_with_a_split_column(tmp_path: Path) -> None:
    """Issue 11's imaging benchmark: 90/10 classes, 200 images per hospital, a fixed split by patient."""
    sites = synthesize_image_hospitals(tmp_path, images_per_hospital=200, classes=("normal", "lesion"), majority=0.9,
                                       split_column="split", seed=2)
    for site in sites:
        labels = pd.read_csv(site / "labels.csv")
        assert len(labels) == 200 and 0.8 <= (labels["label"] == "normal").mean() <= 0.97
        assert set(labels["split"]) == {"train", "val", "test"}
        assert labels.groupby("patient_id")["split"].nunique().max() == 1  # a patient is in one part
    plain = synthesize_image_hospitals(tmp_path / "plain", images_per_hospital=200, classes=("normal", "lesion"),
                                       majority=0.9, seed=2)
    assert (pd.read_csv(plain[0] / "labels.csv").columns == ["image", "patient_id", "label", "sex", "age"]).all()
    assert (plain[0] / "images").exists() and _files(plain[0] / "images") == _files(sites[0] / "images")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"majority": 1.0}, "majority must be at least 1/3 and below 1"),
        ({"majority": 0.2}, "majority must be at least 1/3 and below 1"),
        ({"split_column": "s", "layout": "npz"}, "split_column is for the folder layout"),
        ({"split_column": "label"}, "split_column must be a new column name"),
    ],
)
def test_bad_imbalance_or_split_is_refused(tmp_path: Path, kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        synthesize_image_hospitals(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert expected in str(excinfo.value)


def test_parts_and_lesion_strength(tmp_path: Path) -> None:
    """A larger test part for measuring (40/10/50 by patient) and subtler lesions; defaults unchanged."""
    default = synthesize_image_hospitals(tmp_path / "a", n_hospitals=1, images_per_hospital=60, layout="npz", seed=1)
    same = synthesize_image_hospitals(tmp_path / "b", n_hospitals=1, images_per_hospital=60, layout="npz", seed=1,
                                      parts=(0.7, 0.1, 0.2), lesion_strength=1.0)
    assert default[0].read_bytes() == same[0].read_bytes()
    wide = synthesize_image_hospitals(tmp_path / "c", n_hospitals=1, images_per_hospital=200, layout="npz", seed=1,
                                      parts=(0.4, 0.1, 0.5))
    with np.load(wide[0]) as npz:
        assert len(npz["test_labels"]) > len(npz["train_labels"])
    faint = synthesize_image_hospitals(tmp_path / "d", n_hospitals=1, images_per_hospital=60, layout="npz", seed=1,
                                       lesion_strength=0.5)
    with np.load(default[0]) as full, np.load(faint[0]) as half:
        lesion = full["train_labels"][:, 0] != 0
        spread = lambda a: float(a[lesion].astype(float).std())  # noqa: E731
        assert spread(half["train_images"]) < spread(full["train_images"])
    for bad, message in (({"parts": (0.5, 0.5, 0.0)}, "parts must be three shares"),
                         ({"lesion_strength": 0.0}, "lesion_strength must be in (0, 1]")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            synthesize_image_hospitals(tmp_path / "e", **bad)  # type: ignore[arg-type]
