"""`bioverse data synth`'s messy sites, as a data scientist meets them: from a fresh process,
one site's respelled categories share the others' vocabulary, the missing code is counted
and the split column is honoured by `bioverse data check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.spec import load_spec
from training.tabular.data import load_split
from training.tabular.preprocessing import FeatureEncoder, local_statistics, merge_statistics
from training.tabular.synth import FEATURE_RANGES, FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL

pytestmark = pytest.mark.integration

BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def test_messy_sites_are_read_as_one_federation(tmp_path: Path) -> None:
    synth = subprocess.run([BIOVERSE, "data", "synth", "--out", str(tmp_path), "--hospitals", "3", "--patients", "900",
                            "--respell-site", "2", "--split-column", "split", "--missing-code-site", "3"],
                           capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    files = sorted(tmp_path.glob("hospital-*.csv"))
    raw = [pd.read_csv(f, dtype=str) for f in files]
    assert set(raw[1]["sex"]) == {" M ", " F "} and "3.0" in set(raw[1]["smoking"])
    zeros = int((raw[2]["cholesterol"] == "0").sum())
    spec = {"name": "messy", "data": {
        "label": LABEL, "numeric": list(FEATURES_NUMERIC), "categorical": list(FEATURES_CATEGORICAL),
        "split_column": "split", "missing_codes": {"cholesterol": [0]},
        "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
        "hospitals": [{"id": f.stem, "path": f.name} for f in files]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))

    check = subprocess.run([BIOVERSE, "data", "check", str(tmp_path / "spec.yaml")], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    for f, frame in zip(files, raw):
        counts = frame["split"].value_counts()
        assert (f"{f.stem}: ok, {len(frame)} patients: train {counts['train']}, val {counts['val']}, "
                f"test {counts['test']} (split from column 'split')") in check.stdout
    assert f"hospital-03: missing codes turned values into missing: cholesterol {zeros}" in check.stdout and zeros > 0
    assert "warning" not in check.stdout.lower(), check.stdout  # no site's spelling is "seen at no other hospital"

    loaded = load_spec(tmp_path / "spec.yaml")
    contract = loaded.data.contract
    splits = [load_split(h.path, contract, loaded.data.test_fraction, loaded.seed) for h in loaded.data.hospitals]
    encoder = FeatureEncoder.from_statistics(merge_statistics([local_statistics(s.train, contract) for s in splits]), contract)
    names = encoder.feature_names
    assert {"sex=M", "sex=F", "smoking=1", "smoking=2", "smoking=3"} <= set(names)
    assert not any(n in names for n in ("sex= M ", "smoking=3.0", "smoking=1.0"))
