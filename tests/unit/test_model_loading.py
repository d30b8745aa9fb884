"""The one path that loads a registered version (serving.model_source.RegistryModel): the API,
the Ray Serve deployments and bulk scoring all refuse a `production` version without a valid
approval through it. Real package files and the real gate check; the registry is a stand-in."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.errors import ModelNotReadyError, UnapprovedVersion
from serving.follow import AliasFollower
from serving.loaded import LoadedModel, LoadedVisionModel, load_package, package_folder, package_modality
from serving.model_source import RegistryModel
from training.tabular.contract import DataContract
from training.tabular.models import build_model
from training.tabular.package import save_package_files
from training.tabular.preprocessing import FeatureEncoder, local_statistics

MODEL = "unit-risk"


class _Registry:
    """The two MLflow client calls a loader makes: the alias's version and a version's tags."""

    def __init__(self) -> None:
        self.alias_version = "1"
        self.tags: dict[str, dict[str, str]] = {}

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        version = self.alias_version
        return SimpleNamespace(version=version, tags=self.tags.get(version, {}))

    def get_model_version(self, name: str, version: str) -> Any:
        return SimpleNamespace(version=version, tags=self.tags.get(version, {}), source=f"models:/m-{version}")


@pytest.fixture()
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real risk model package, which every download of any version copies."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pid": [f"p{i}" for i in range(100)], "age": rng.normal(60, 10, 100),
                          "cp": rng.integers(1, 5, 100).astype(str), "event": rng.integers(0, 2, 100)})
    contract = DataContract("pid", "event", ("age",), ("cp",))
    encoder = FeatureEncoder.from_statistics(local_statistics(frame, contract), contract)
    folder = tmp_path / "package"
    save_package_files(folder / "artifacts", build_model("logistic", encoder.input_dim).eval(), encoder, "logistic", {})

    def download(tracking_uri: str, name: str, version: str, dst: Path) -> Path:
        shutil.copytree(folder, dst / "model")
        return dst / "model"

    monkeypatch.setattr("serving.model_source.download_version", download)
    return folder


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> _Registry:
    """The registry every RegistryModel of the test talks to."""
    registry = _Registry()
    monkeypatch.setattr("serving.model_source.MlflowClient", lambda **kwargs: registry)
    return registry


def _source(alias: str = "production") -> RegistryModel:
    return RegistryModel("unused://", MODEL, alias)


def test_the_package_says_what_it_is(package: Path) -> None:
    folder = package_folder(package)
    assert folder == package / "artifacts" and package_modality(folder) == "tabular"
    assert isinstance(load_package(MODEL, "1", folder), LoadedModel)
    images = package.parent / "images"
    images.mkdir()
    (images / "model.json").write_text('{"modality": "images", "kind": "cnn"}')
    assert package_modality(images) == "images"


def test_an_unapproved_production_version_is_refused_for_the_api_serve_and_bulk(
        package: Path, registry: _Registry, tmp_path: Path) -> None:
    from platform_api.services import ModelService
    from serving import bulk, risk

    refusals: list[tuple[str, str]] = []
    api = ModelService(_source(), 0.0, on_refused=lambda version, why: refusals.append((version, why)))
    with pytest.raises(UnapprovedVersion, match="production alias without approval"):
        api.current()
    with pytest.raises(UnapprovedVersion):
        api.current()
    assert [v for v, _ in refusals] == ["1"] and "not approved" in refusals[0][1]  # reported once

    with pytest.raises(UnapprovedVersion):
        risk.RiskPredictor.func_or_class("unused://", MODEL)

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text("project: unit\n")
    with pytest.raises(UnapprovedVersion):
        bulk.score_offline_store(tracking_uri="unused://", model=MODEL, feature_repo=repo,
                                 output=tmp_path / "scores.parquet")
    assert not (tmp_path / "scores.parquet").exists()


def test_candidate_needs_no_approval_and_a_kind_mismatch_is_not_ready(package: Path, registry: _Registry) -> None:
    follower = AliasFollower(_source("candidate"), LoadedModel, background=False)
    assert follower.current().version == "1"
    assert follower.fresh() is follower.current()  # checked within poll_seconds: no registry call
    with pytest.raises(ModelNotReadyError, match="not a BioVerse image classifier"):
        _source("candidate").load("1", LoadedVisionModel)


def test_a_follower_keeps_its_version_when_the_alias_moves_to_an_unapproved_one(package: Path, registry: _Registry) -> None:
    source = _source()
    source.require_approval = False  # version 1 loads as an approved one would
    refusals: list[str] = []
    served = AliasFollower(source, LoadedModel, background=False, poll_seconds=0.0,
                           on_refused=lambda version, why: refusals.append(version))
    assert served.current().version == "1"
    source.require_approval = True
    registry.alias_version = "2"  # moved by hand to a pending version
    assert served.current().version == "1" and served.current().version == "1"
    assert refusals == ["2"]
