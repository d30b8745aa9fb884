"""Real hospital data through a real Flower simulation run by the CLI: categories spelled
differently by site share one vocabulary, a fixed split column is honoured, values outside
the declared list are reported (or refuse the run), and scoring counts unknown values."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from serving.model_source import RegistryModel
from tests.conftest import spec_dict
from tests.integration.conftest import BIOVERSE, run_experiment_cli

pytestmark = pytest.mark.integration


def _respell(paths: list[Path]) -> dict[str, int]:
    """Site 1 writes sex as 1/2; site 2 as 1.0/2.0, smoking in capitals with spaces and 12 rows
    'unknown'. Both get a fixed split column (every 4th patient is test). Returns test rows per site."""
    tests = {}
    for k, path in enumerate(paths):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame["sex"] = frame["sex"].map({"F": "1", "M": "2"})
        if k == 1:
            frame["sex"] = frame["sex"] + ".0"
            frame["smoking"] = frame["smoking"].map(lambda v: f" {v.upper()} " if v else v)
            frame.loc[frame.index[:12], "smoking"] = "unknown"  # 9 of them in training rows
        frame["part"] = ["TEST" if i % 4 == 0 else "train" for i in range(len(frame))]
        frame.to_csv(path, index=False)
        tests[path.stem] = int((frame["part"] == "TEST").sum())
    return tests


def _run(spec: dict, tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, str]:
    done, uri, _ = run_experiment_cli(spec, tmp_path, name=name, timeout=600)
    return done, uri


def test_differently_spelled_sites_share_one_vocabulary_and_the_split_column_is_honoured(
        hospital_files: list[Path], tmp_path: Path) -> None:
    paths = hospital_files[:2]
    test_rows = _respell(paths)
    spec = spec_dict(paths, name="it-spelling", registered_model="it-spelling-risk",
                     data={"split_column": "part", "categories": {"smoking": ["never", "former", "current"]}},
                     training={"rounds": 1}, privacy={"enabled": False})
    done, uri = _run(spec, tmp_path, "warn")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("vocabulary warning: hospital-02: smoking: 1 value outside the declared list: 'unknown' (9)"
            in done.stdout), done.stdout

    encoder = RegistryModel(uri, "it-spelling-risk", require_approval=False).load("1").scorer.encoder
    vocabulary = dict(zip(encoder.categorical, encoder.vocabulary, strict=True))
    assert vocabulary == {"sex": ("1", "2"), "smoking": ("current", "former", "never")}

    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-spelling-risk", "1").tags
    assert int(tags["validation.n"]) == sum(test_rows.values())  # the split column's test rows, no others
    report = json.loads(Path(client.download_artifacts(tags["run_id"], "vocabulary.json", str(tmp_path))).read_text())
    assert report["policy"] == "warn"
    assert report["findings"] == [{"site": "hospital-02", "column": "smoking", "site_only": {},
                                   "undeclared": {"unknown": 9}, "rare": 0}]

    refuse = {**spec, "name": "it-spelling-refuse", "data": {**spec["data"], "unknown_categories": "refuse"}}
    refused, _ = _run(refuse, tmp_path, "refuse")
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hospital-02: smoking" in errors[0] and "'unknown' (9)" in errors[0], refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    scored = tmp_path / "scored.csv"
    frame = pd.read_csv(paths[0], dtype=str, keep_default_na=False)
    frame["part"] = "test"
    frame.loc[frame.index[:7], "sex"] = "3"  # a sex code the model never learned
    frame.to_csv(scored, index=False)
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home")}
    validated = subprocess.run([BIOVERSE, "registry", "validate", "1", "--data", str(scored), "--model", "it-spelling-risk",
                                "--tracking-uri", uri, "--output", str(tmp_path / "mine")],
                               capture_output=True, text=True, env=env, timeout=300)
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-3000:]
    assert "warning: sex: 7 values unknown to the model, scored as other: '3' (7)" in validated.stderr
    assert json.loads((tmp_path / "mine" / "unknown_categories.json").read_text()) == {"sex": {"3": 7}}
