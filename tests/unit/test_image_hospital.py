"""A hospital's image round (training.imaging.hospital through federation.hospital): the val part is not training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.spec import parse_spec
from federation.hospital import train_round
from federation.ledger import PrivacyLedger
from federation.site import Site
from training.dp_loop import sample_rate, steps_per_epoch
from training.imaging.preprocessing import ImagePreprocessor
from training.privacy import epsilon_after

CLASSES = ("normal", "nodule", "opacity")


def test_the_val_part_is_neither_trained_on_nor_in_the_privacy_accounting(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {"train": 40, "val": 30, "test": 10}
    arrays = {}
    for part, n in sizes.items():
        arrays[f"{part}_images"] = rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
        arrays[f"{part}_labels"] = rng.integers(0, 3, (n, 1)).astype(np.uint8)
    np.savez(tmp_path / "site.npz", **arrays)
    spec = parse_spec({
        "name": "img", "strategy": {"min_hospitals": 1}, "model": {"kind": "cnn", "width": 4},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 8, "learning_rate": 0.01},
        "privacy": {"target_epsilon": 4.0, "hospital_budget": 50.0},
        "data": {"modality": "images", "classes": list(CLASSES), "image_size": 16, "augment": None,
                 "hospitals": [{"id": "h1", "path": str(tmp_path / "site.npz")}]}})
    site = Site("h1", tmp_path / "site.npz", 50.0, tmp_path / "ledger.json")
    pre = ImagePreprocessor(16, 1, (0.5,), (0.25,), CLASSES)
    state = spec.modality.build_model(spec, pre).state_dict()
    outcome = train_round(site=site, spec=spec, encoder=pre, state=state, run_key="r", server_round=1, proximal_mu=0.0)
    assert outcome.metrics["num-examples"] == sizes["train"]  # not train + val
    entry = PrivacyLedger(tmp_path / "ledger.json", "h1").entry("r")
    assert entry is not None and entry.steps == steps_per_epoch(sizes["train"], 8)
    q = sample_rate(sizes["train"], 8)  # the sample rate of the training images alone
    expected = epsilon_after(noise_multiplier=outcome.metrics["noise-multiplier"], sample_rate=q, steps=entry.steps,
                             delta=spec.privacy.target_delta, accountant=spec.privacy.accountant)
    assert entry.epsilon == pytest.approx(expected)
