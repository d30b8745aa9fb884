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
        ({"strategy": {"name": "fedsgd"}}, "strategy.name: Input should be 'fedavg', 'fedprox', 'fedavgm', 'fedadam' or 'fedyogi'"),
        ({"strategy": {"min_hospitals": 5}}, "strategy.min_hospitals is 5 but only 2 hospitals are listed"),
        ({"privacy": {"target_epsilon": 2.0, "noise_multiplier": 1.0}}, "set exactly one of target_epsilon and noise_multiplier"),
        ({"privacy": {"target_delta": 2}}, "privacy.target_delta: Input should be less than 1"),
        ({"name": "bad name!"}, "name: String should match pattern"),
        ({"model": {"kind": "transformer"}}, "model.kind: Input should be 'logistic', 'mlp', 'cnn' or 'resnet18'"),
        ({"model": {"width": 8}}, "model.width: unknown field: tabular models take kind, hidden, dropout"),
        ({"model": {"hidden": [0]}}, "model.hidden.0: Input should be greater than 0"),
        ({"privacy": {"grad_sample_mode": "ew"}}, "privacy.grad_sample_mode: Input should be 'fused', 'hooks', 'ghost' or 'functorch'"),
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


def test_every_problem_of_a_spec_is_listed_one_per_line() -> None:
    data = spec_dict([Path("a.csv"), Path("b.csv")], training={"rounds": 0, "epochs": 3},
                     strategy={"min_hospitals": 5}, privacy={"target_delta": 2})
    with pytest.raises(SpecError) as info:
        parse_spec(data, "s.yaml")
    lines = str(info.value).splitlines()
    assert "more problems" not in str(info.value)
    assert len(lines) == 3 and all(line.startswith("s.yaml: ") for line in lines), lines
    assert {line.split(": ")[1] for line in lines} == {"training.rounds", "training.epochs", "privacy.target_delta"}


def test_every_consistency_problem_is_listed() -> None:
    data = spec_dict([Path("a.csv"), Path("b.csv")], strategy={"min_hospitals": 5},
                     validation={"subgroups": ["nope"]},
                     data={"ranges": {}, "categories": {"age": [1]}, "missing_codes": {"x": [0]}})
    with pytest.raises(SpecError) as info:
        parse_spec(data, "s.yaml")
    text = str(info.value)
    assert "data: categories: age is not a declared categorical column" in text
    assert "data: missing_codes: x is not a declared feature column" in text
    data["data"].pop("categories"), data["data"].pop("missing_codes")
    with pytest.raises(SpecError) as info:
        parse_spec(data, "s.yaml")
    lines = str(info.value).splitlines()
    assert any("validation.subgroups: nope" in line for line in lines)
    assert any("data.ranges: declare [min, max]" in line for line in lines)
    assert any("strategy.min_hospitals is 5" in line for line in lines), lines


def test_declared_categories_missing_codes_and_split_reach_the_contract() -> None:
    spec = parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], data={
        "categories": {"smoking": [0, 1.0, " 2 ", "Never"]}, "unknown_categories": "refuse",
        "missing_codes": {"age": [0, "unknown"]}, "split_column": "part", "val_fraction": 0.1}))
    contract = spec.data.contract
    assert contract.declared("smoking") == ("0", "1", "2", "Never") and contract.declared("sex") is None
    assert contract.codes("age") == ("0", "unknown") and contract.split_column == "part"
    assert "part" in contract.required and spec.data.unknown_categories == "refuse"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"categories": {"smoking": []}}, "data: categories: smoking needs at least one value"),
        ({"categories": {"smoking": ["1", 1.0]}}, "data: categories: smoking lists '1' twice"),
        ({"categories": {"smoking": [" "]}}, "data.categories.smoking.0: must not be empty"),
        ({"categories": {"smoking": [float("inf")]}}, "data.categories.smoking.0: must be a finite number or text"),
        ({"unknown_categories": "ignore"}, "data.unknown_categories: Input should be 'warn' or 'refuse'"),
        ({"split_column": "age"}, "data: column declared twice: age"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "test_fraction + val_fraction must be below 0.9"),
    ],
)
def test_bad_data_fields_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict([Path("a.csv"), Path("b.csv")], data=data), "s.yaml")
    assert message in str(info.value)
