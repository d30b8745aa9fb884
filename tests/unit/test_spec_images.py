"""Image experiment specs: the imaging contract, model kinds and DP defaults for images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.errors import SpecError
from experiments.spec import parse_spec
from training.imaging.spec import ImageDataSpec


def image_spec_dict(**overrides: Any) -> dict[str, Any]:
    """A small valid image spec over two hospital folders; ``overrides`` replace sections."""
    spec: dict[str, Any] = {
        "name": "xray",
        "data": {"modality": "images", "classes": ["normal", "nodule", "opacity"], "image_size": 28, "channels": 1,
                 "hospitals": [{"id": "a", "path": "a"}, {"id": "b", "path": "b.npz"}]},
        "training": {"rounds": 2, "batch_size": 32, "learning_rate": 0.002},
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return spec


def test_an_image_spec_gets_an_image_model_and_per_sample_hooks() -> None:
    spec = parse_spec(image_spec_dict())
    assert spec.modality.name == "images" and isinstance(spec.data, ImageDataSpec)
    assert spec.model.kind == "cnn"  # the default for images, not the tabular mlp
    assert spec.privacy.grad_sample_mode == "hooks"  # fused clipping is Linear-only
    contract = spec.data.contract
    assert (contract.classes, contract.size, contract.channels) == (("normal", "nodule", "opacity"), 28, 1)
    assert spec.validation.subgroup_columns(spec.data) == []  # no metadata: by hospital only
    with_meta = parse_spec(image_spec_dict(data={**image_spec_dict()["data"], "metadata": ["sex", "age", "site"]}))
    assert with_meta.validation.subgroup_columns(with_meta.data) == ["sex", "age"]
    assert with_meta.data.contract.metadata == ("sex", "age", "site")
    assert spec.data.augment is not None and spec.data.augment.hflip is False


def test_explicit_choices_are_kept() -> None:
    spec = parse_spec(image_spec_dict(model={"kind": "resnet18", "width": 32}, privacy={"grad_sample_mode": "ghost"},
                                      data={**image_spec_dict()["data"], "augment": None, "channels": 3,
                                            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    assert spec.model.kind == "resnet18" and spec.model.width == 32
    assert spec.privacy.grad_sample_mode == "ghost"
    assert spec.data.augment is None and spec.data.mean == [0.5, 0.5, 0.5]


def test_tabular_specs_are_unchanged_by_the_modality() -> None:
    from tests.conftest import spec_dict

    spec = parse_spec(spec_dict([Path("a.csv"), Path("b.csv")]))
    assert spec.modality.name == "tabular" and spec.data.modality == "tabular" and spec.privacy.grad_sample_mode == "fused"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"kind": "mlp"}}, "model.kind: mlp is for tabular data; images take cnn or resnet18"),
        ({"privacy": {"grad_sample_mode": "fused"}}, "fused is for Linear-only models"),
        ({"model": {"hidden": [8]}}, "model.hidden: unknown field: images models take kind, width"),
        ({"model": {"width": 2}}, "model.width: Input should be greater than or equal to 4"),
        ({"data": {"classes": ["normal"]}}, "data.classes: List should have at least 2 items"),
        ({"data": {"classes": ["a", "b", "a"]}}, "data: class listed twice: a"),
        ({"data": {"channels": 2}}, "data.channels: Input should be 1 or 3"),
        ({"data": {"image_size": 4}}, "data.image_size: Input should be greater than or equal to 8"),
        ({"data": {"mean": [0.5]}}, "give both mean and std, or neither"),
        ({"data": {"mean": [0.5], "std": [0.2, 0.2]}}, "std needs 1 value(s), one per channel"),
        ({"data": {"std": [0.0], "mean": [0.5]}}, "data.std.0: Input should be greater than 0"),
        ({"data": {"modality": "video"}}, "data: modality must be tabular or images"),
        ({"data": {"numeric": ["age"]}}, "data.numeric: unknown field"),
        ({"validation": {"subgroups": ["sex"]}}, "validation.subgroups: sex is not a declared data.metadata column"),
        ({"data": {"metadata": ["sex", "label"]}}, "data: column declared twice: label"),
        ({"data": {"split_column": "sex", "metadata": ["sex"]}}, "data: column declared twice: sex"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction: Input should be greater than or equal to 0"),
        ({"data": {"test_fraction": 0.5, "val_fraction": 0.4}}, "data: test_fraction + val_fraction must be below 0.9"),
    ],
)
def test_invalid_image_specs_name_the_field(change: dict, message: str) -> None:
    data = image_spec_dict()
    for key, value in change.items():
        data[key] = {**data[key], **value} if key in data and isinstance(data[key], dict) else value
    with pytest.raises(SpecError) as info:
        parse_spec(data, "x.yaml")
    assert message in str(info.value)


def test_a_stored_spec_of_an_earlier_version_keeps_parsing() -> None:
    # spec.json of a version registered before each modality had its own model section
    stored = image_spec_dict(model={"kind": "resnet18", "hidden": [64, 32], "dropout": 0.1, "width": 16})
    spec = parse_spec(stored, "v1", stored=True)
    assert spec.model.kind == "resnet18" and spec.model.width == 16
    assert spec.modality.model_hparams(spec) == {"lr": 0.002, "optimizer": "adam", "width": 16}
    with pytest.raises(SpecError, match="model.hidden: unknown field"):
        parse_spec(stored, "spec.yaml")  # a spec a user writes gets no such leniency


def test_fused_dp_is_refused_on_images_only_when_private() -> None:
    spec = parse_spec(image_spec_dict(privacy={"enabled": False, "grad_sample_mode": "fused"}))
    assert spec.privacy.grad_sample_mode == "fused"  # not used without DP


def test_a_split_column_and_a_val_fraction_reach_the_contract() -> None:
    spec = parse_spec(image_spec_dict(data={**image_spec_dict()["data"], "split_column": "part", "val_fraction": 0.1}))
    assert isinstance(spec.data, ImageDataSpec)
    assert spec.data.contract.split_column == "part" and spec.data.val_fraction == 0.1
    plain = parse_spec(image_spec_dict())
    assert isinstance(plain.data, ImageDataSpec)
    assert plain.data.contract.split_column is None and plain.data.val_fraction == 0.0


def test_image_models_need_image_data() -> None:
    from tests.conftest import spec_dict

    with pytest.raises(SpecError, match="model.kind: cnn is for images"):
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], model={"kind": "cnn"}))


def test_simulated_hospitals_share_the_gpus_only_for_image_models(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from federation.launcher import simulation_gpus
    from tests.conftest import spec_dict

    images = parse_spec(image_spec_dict(data={**image_spec_dict()["data"], "hospitals": [
        {"id": h, "path": h} for h in ("a", "b", "c")]}))
    tabular = parse_spec(spec_dict([Path("a.csv"), Path("b.csv")]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert simulation_gpus(images) == 0.0  # no GPU: CPU training, nothing reserved
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # the count as a GPU machine reports it
    assert simulation_gpus(images) == pytest.approx(0.667) and simulation_gpus(tabular) == 0.0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert simulation_gpus(images) == 1.0  # at most one GPU per hospital
