"""Issue 10 items 10 and 17: non-finite spec values are refused naming the field, and a bad
spec (or a long relayed remote error) prints one short line from the CLI."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from experiments.errors import SpecError
from experiments.spec import ExperimentSpec, load_spec, parse_spec
from federation.errors import LaunchError
from federation.strategy import remote_reason
from platform_api import cli
from platform_api.cli.output import one_line_errors
from tests.conftest import spec_dict

runner = CliRunner()

#: Every float-valued field of the spec (dotted path as in the error, and where to set it).
TABULAR_FLOATS = [
    "privacy.target_epsilon", "privacy.target_delta", "privacy.max_grad_norm", "privacy.hospital_budget",
    "privacy.statistics_epsilon", "privacy.noise_multiplier", "strategy.proximal_mu",
    "strategy.server_learning_rate", "strategy.tau", "strategy.round_timeout", "strategy.join_timeout",
    "training.learning_rate", "data.test_fraction", "model.dropout", "validation.thresholds.0",
    "data.hospitals.0.privacy_budget", "data.ranges.age.0", "data.val_fraction",
    "strategy.server_momentum", "privacy.target_quantile", "privacy.clip_learning_rate",
    "training.class_weights", "validation.threshold.target", "validation.threshold.value",
    "privacy.selection_epsilon", "selection.min_delta",
]
IMAGE_FLOATS = ["data.mean.0", "data.std.0", "data.augment.rotate", "data.augment.translate",
                "data.augment.brightness", "data.augment.contrast"]


def _float_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Names of float fields, recursively (the test's lists must cover every one)."""
    found: set[str] = set()
    for name, field in model.model_fields.items():
        args = {field.annotation, *typing.get_args(field.annotation)}
        for arg in list(args):
            args |= set(typing.get_args(arg))
            for inner in typing.get_args(arg):
                args |= set(typing.get_args(inner))
        if float in args or any(float in typing.get_args(a) for a in args):
            found.add(prefix + name)
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found |= _float_fields(arg, f"{prefix}{name}.")
    return found


def test_the_lists_cover_every_float_field() -> None:
    named = {".".join(p for p in path.split(".") if not p.isdigit() and p != "age") for path in TABULAR_FLOATS + IMAGE_FLOATS}
    assert _float_fields(ExperimentSpec) <= named, _float_fields(ExperimentSpec) - named


def _set(tree: dict[str, Any], path: str, value: float) -> None:
    keys = path.split(".")
    node: Any = tree
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


def _image_spec() -> dict[str, Any]:
    return {"name": "img", "data": {"modality": "images", "classes": ["a", "b"], "mean": [0.5], "std": [0.2],
                                    "augment": {}, "hospitals": [{"id": "h1", "path": "h1"}, {"id": "h2", "path": "h2"}]}}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("path", TABULAR_FLOATS + IMAGE_FLOATS)
def test_non_finite_values_are_refused_naming_the_field(path: str, value: float) -> None:
    tree = _image_spec() if path in IMAGE_FLOATS else spec_dict([Path("a.csv"), Path("b.csv")])
    if path == "data.hospitals.0.privacy_budget":
        tree["data"]["hospitals"][0]["privacy_budget"] = 1.0
    if path == "privacy.noise_multiplier":
        tree["privacy"].pop("target_epsilon")
    if path.startswith("validation."):
        tree["validation"] = {"thresholds": [0.1, 0.2]}
    _set(tree, path, value)
    with pytest.raises(SpecError) as info:
        parse_spec(tree, "s.yaml")
    assert str(info.value).startswith(f"s.yaml: {path}: "), str(info.value)


def test_the_probed_yaml_inf_spec_is_refused(tmp_path: Path) -> None:
    tree = spec_dict([Path("a.csv"), Path("b.csv")])
    text = yaml.safe_dump(tree).replace("target_epsilon: 2.0", "target_epsilon: .inf").replace("hospital_budget: 10.0", "hospital_budget: .inf")
    (tmp_path / "inf.yaml").write_text(text)
    with pytest.raises(SpecError, match=r"privacy\.(target_epsilon|hospital_budget): Input should be a finite number"):
        load_spec(tmp_path / "inf.yaml")


def _one_short_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert len(lines[0]) < 320, len(lines[0])
    return lines[0]


def test_inf_spec_prints_one_line_from_validate_and_run_and_launches_nothing(tmp_path: Path) -> None:
    tree = spec_dict([Path("a.csv"), Path("b.csv")])
    (tmp_path / "a.csv").write_text("x")
    text = yaml.safe_dump(tree).replace("target_epsilon: 2.0", "target_epsilon: .inf")
    (tmp_path / "inf.yaml").write_text(text)
    home = tmp_path / "home"
    env = {"BIOVERSE_DATA_DIR": str(home)}
    for command in (["experiment", "validate"], ["experiment", "run"]):
        line = _one_short_line(runner.invoke(cli.app, [*command, str(tmp_path / "inf.yaml")], env=env))
        assert "privacy.target_epsilon: Input should be a finite number" in line
    assert not (home / "runs").exists()  # refused before anything was launched


def test_a_long_relayed_error_is_one_bounded_line() -> None:
    # the reason Flower relayed for each hospital in the probed run (spec with .inf, before the fix): 3.8 KB,
    # colour codes, Ray's chained traceback; three of them made the 10.8 KB "one-line" error
    real = (Path(__file__).parent / "data" / "ray_client_app_error.txt").read_text()
    assert remote_reason(real) == "ZeroDivisionError: float division by zero"
    traceback = ("Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n    g()\n' * 60
                 + "ValueError: cannot reach epsilon inf\n")
    flower = f"<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n{traceback}'>"
    assert remote_reason(flower) == "ValueError: cannot reach epsilon inf"
    assert remote_reason("<class 'ZeroDivisionError'>:<'division by zero'>") == "ZeroDivisionError: division by zero"
    assert len(remote_reason("x" * 5000)) <= 200

    @one_line_errors
    def fails() -> None:
        raise LaunchError("run failed: " + "; ".join([real] * 3))  # the probed 10.8 KB error, unprocessed

    local = typer.Typer()
    local.command()(fails)
    line = _one_short_line(runner.invoke(local, []))
    assert line.startswith("error: run failed:")


def test_the_training_layer_refuses_non_finite_privacy_too() -> None:
    """Defence in depth: the calibration that divided by zero in the probe refuses first."""
    from training.errors import PrivacyConfigError
    from training.privacy import DPConfig, noise_for_budget

    with pytest.raises(PrivacyConfigError, match="target_epsilon must be a finite number"):
        DPConfig(target_epsilon=math.inf)
    with pytest.raises(PrivacyConfigError, match="positive finite"):
        noise_for_budget(target_epsilon=math.inf, delta=1e-5, sample_rate=0.01, steps=100)
