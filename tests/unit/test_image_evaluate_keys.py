"""Every image hospital's evaluate reply carries the same metric keys (Flower refuses to
aggregate replies whose keys differ): a held-out part with one class only answers AUROC NaN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments.spec import parse_spec
from federation.hospital import evaluate_global
from federation.site import Site
from training.imaging.preprocessing import ImagePreprocessor


def _npz(path: Path, test_labels: list[int]) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 255, (8, 12, 12), dtype=np.uint8), train_labels=np.array([[0], [1]] * 4),
             val_images=np.zeros((0, 12, 12), dtype=np.uint8), val_labels=np.zeros((0, 1), dtype=np.int64),
             test_images=rng.integers(0, 255, (len(test_labels), 12, 12), dtype=np.uint8),
             test_labels=np.array(test_labels)[:, None])
    return path


def test_a_site_whose_held_out_images_are_one_class_answers_auroc_nan(tmp_path: Path) -> None:
    paths = [_npz(tmp_path / "a.npz", [0, 0, 0, 0]), _npz(tmp_path / "b.npz", [0, 1, 0, 1])]
    spec = parse_spec({"name": "keys", "data": {"modality": "images", "classes": ["normal", "lesion"], "image_size": 12,
                                                "hospitals": [{"id": p.stem, "path": str(p)} for p in paths]},
                       "privacy": {"enabled": False}})
    pre = ImagePreprocessor(size=12, channels=1, mean=(0.5,), std=(0.25,), classes=("normal", "lesion"))
    state = spec.modality.build_model(spec, pre).state_dict()
    replies = [evaluate_global(site=Site(p.stem, p, 10.0, tmp_path / "ledger.db"), spec=spec, encoder=pre, state=state)
               for p in paths]
    assert set(replies[0]) == set(replies[1]) and "auroc" in replies[0]
    assert math.isnan(replies[0]["auroc"]) and 0.0 <= replies[1]["auroc"] <= 1.0
