"""Experiment specs validate with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.errors import SpecError
from experiments.examples import EXAMPLES_DIR, quickstart_spec
from experiments.spec import load_spec, parse_spec
from tests.conftest import spec_dict


@pytest.mark.parametrize("example", sorted(EXAMPLES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_examples_validate(example: Path) -> None:
    spec = load_spec(example)
    assert spec.data.hospitals and all(h.path and h.path.is_absolute() for h in spec.data.hospitals)


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    data = spec_dict([Path("sites/a.csv"), Path("sites/b.csv")])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "spec.yaml")
    assert [h.path for h in spec.data.hospitals] == [tmp_path / "sites/a.csv", tmp_path / "sites/b.csv"]
    assert quickstart_spec(tmp_path).data.hospitals[0].path == tmp_path / "hospital-01.csv"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training": {"rounds": 0}}, "training.rounds: Input should be greater than or equal to 1"),
        ({"training": {"epochs": 3}}, "training.epochs: unknown field"),
        ({"strategy": {"name": "fedsgd"}}, "strategy.name: Input should be 'fedavg', 'fedprox', 'fedadam' or 'fedyogi'"),
        ({"strategy": {"min_hospitals": 5}}, "strategy.min_hospitals is 5 but only 2 hospitals are listed"),
        ({"privacy": {"target_epsilon": 2.0, "noise_multiplier": 1.0}}, "set exactly one of target_epsilon and noise_multiplier"),
        ({"privacy": {"target_delta": 2}}, "privacy.target_delta: Input should be less than 1"),
        ({"name": "bad name!"}, "name: String should match pattern"),
        ({"model": {"kind": "transformer"}}, "model.kind: Input should be 'logistic', 'mlp', 'cnn' or 'resnet18'"),
    ],
)
def test_invalid_specs_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], **change), "s.yaml")
    assert str(info.value).startswith("s.yaml: ")
    assert message in str(info.value)


def test_duplicate_columns_and_hospitals_are_refused() -> None:
    with pytest.raises(SpecError, match="column declared twice: age"):
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], data={"numeric": ["age", "age"]}))
    with pytest.raises(SpecError, match="hospital id listed twice: a"):
        parse_spec(spec_dict([Path("x/a.csv"), Path("y/a.csv")]))


def test_noise_multiplier_alone_replaces_the_default_target() -> None:
    spec = parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], privacy={"target_epsilon": None, "noise_multiplier": 1.2}))
    assert spec.privacy.dp_config.noise_multiplier == 1.2 and spec.privacy.dp_config.target_epsilon is None


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(tmp_path / "list.yaml")
