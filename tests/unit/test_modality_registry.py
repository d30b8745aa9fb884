"""The modality registry: lookup by the spec's data.modality, the Protocol, runtime registration."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest

from experiments.errors import SpecError
from experiments.spec import parse_spec
from tests.conftest import spec_dict
from training.data_section import DataSection
from training.errors import UnknownModalityError
from training.modality import REGISTRY, Modality, get_modality, register_modality
from training.model_section import ModelSection
from training.tabular.modality import TabularModality
from training.tabular.spec import DataSpec


class SurvivalDataSpec(DataSpec):
    """A stand-in third kind of data: a tabular table under another modality name."""

    modality: Literal["survival"]  # type: ignore[assignment]


class SurvivalModelSpec(ModelSection):
    """The stand-in's model section: its own kind, default and hyperparameter."""

    kind: str = "logistic"
    ties: Literal["breslow", "efron"] = "efron"
    kinds: ClassVar[tuple[str, ...]] = ("logistic",)


class SurvivalModality(TabularModality):
    """The stand-in's modality: tabular behaviour, its own name, data and model sections."""

    name = "survival"

    @property
    def data_spec(self) -> type[SurvivalDataSpec]:
        return SurvivalDataSpec

    @property
    def model_spec(self) -> type[SurvivalModelSpec]:
        return SurvivalModelSpec


SURVIVAL = SurvivalModality()


def test_a_data_section_must_name_its_classes() -> None:
    class NoClasses(DataSection):
        """Forgets :meth:`DataSection.class_names`."""

        modality: Literal["x"] = "x"

    with pytest.raises(TypeError, match="abstract"):
        NoClasses()


def test_an_unknown_modality_name_is_a_clear_error() -> None:
    with pytest.raises(UnknownModalityError, match=r"unknown modality 'video' \(registered: images, tabular\)"):
        get_modality("video")
    with pytest.raises(SpecError, match="data: modality must be tabular or images"):
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], data={"modality": "video"}))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_modality_satisfies_the_protocol(name: str) -> None:
    modality = get_modality(name)
    assert isinstance(modality, Modality)
    assert modality.name == name
    assert modality.data_spec.model_fields["modality"].annotation == Literal[name]  # type: ignore[valid-type]


def test_the_spec_looks_its_modality_up_in_the_registry() -> None:
    spec = parse_spec(spec_dict([Path("a.csv"), Path("b.csv")]))
    assert spec.modality is get_modality("tabular") and spec.modality.class_names(spec) == ["0", "1"]


def test_a_model_kind_no_registered_modality_takes_lists_the_registered_kinds() -> None:
    with pytest.raises(SpecError, match="model.kind: Input should be 'logistic', 'mlp', 'cnn' or 'resnet18'"):
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], model={"kind": "coxph"}))


def test_a_modality_registered_at_runtime_is_used_by_the_spec_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "survival", "")  # undone after the test
    register_modality("survival", f"{__name__}:SURVIVAL")
    data = spec_dict([Path("a.csv"), Path("b.csv")])
    data["data"] = {**data["data"], "modality": "survival"}
    spec = parse_spec(data)
    assert isinstance(spec.data, SurvivalDataSpec) and spec.modality is SURVIVAL
    assert isinstance(spec.model, SurvivalModelSpec) and spec.model.kind == "logistic"  # its model section's default
    assert spec.privacy.grad_sample_mode == "hooks"  # the model section's first mode
    round_trip = parse_spec(spec.model_dump(mode="json"))  # the run config's round trip
    assert round_trip.data == spec.data and round_trip.model == spec.model
    assert parse_spec({**data, "model": {"ties": "breslow"}}).model == SurvivalModelSpec(ties="breslow")
    with pytest.raises(SpecError, match="model.kind: mlp is not a model for survival data; use logistic"):
        parse_spec({**data, "model": {"kind": "mlp"}})
    with pytest.raises(SpecError, match="model.hidden: unknown field: survival models take kind, ties"):
        parse_spec({**data, "model": {"hidden": [8]}})
    with pytest.raises(SpecError, match="privacy.grad_sample_mode: fused does not fit survival models; they take hooks"):
        parse_spec({**data, "privacy": {"grad_sample_mode": "fused"}})

