"""The bioverse CLI: useful output, and one clear line with a non-zero exit on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from platform_api.cli import app
from tests.conftest import spec_dict

runner = CliRunner()


def test_synth_writes_hospitals_and_check_accepts_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "synth", "--hospitals", "2", "--patients", "400", "--seed", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "hospital-01" in result.output and (tmp_path / "hospital-02.csv").exists()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_dict([Path("hospital-01.csv"), Path("hospital-02.csv")])))
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert checked.exit_code == 0 and checked.output.count(": ok,") == 2
    valid = runner.invoke(app, ["experiment", "validate", str(tmp_path / "spec.yaml")])
    assert valid.exit_code == 0 and "valid (2 hospitals, 2 rounds, fedavg, DP)" in valid.output


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_inputs_print_one_line_and_exit_1(tmp_path: Path) -> None:
    line = _one_error_line(runner.invoke(app, ["data", "synth", "--hospitals", "0", "--out", str(tmp_path)]))
    assert "hospital" in line
    line = _one_error_line(runner.invoke(app, ["experiment", "run", str(tmp_path / "nope.yaml")]))
    assert "nope.yaml: cannot read spec" in line
    bad = spec_dict([Path("a.csv"), Path("b.csv")], training={"rounds": -1})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    line = _one_error_line(runner.invoke(app, ["experiment", "validate", str(tmp_path / "bad.yaml")]))
    assert "training.rounds: Input should be greater than or equal to 1" in line
    (tmp_path / "a.csv").write_text("patient_id,age\n1,2\n")
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(spec_dict([Path("a.csv"), Path("b.csv")])))
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "good.yaml")])
    lines = [line for line in checked.output.splitlines() if line.strip()]
    assert checked.exit_code == 1 and len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "a: " in lines[0] and "a.csv, column 'systolic_bp': missing required column" in lines[0]
    assert "b: " in lines[1] and "b.csv: file not found" in lines[1]
    line = _one_error_line(runner.invoke(app, ["experiment", "run", str(tmp_path / "good.yaml"), "--engine", "cloud"]))
    assert "--engine must be simulation or deployment" in line


def test_ledger_show(tmp_path: Path) -> None:
    from federation.ledger import PrivacyLedger

    PrivacyLedger(tmp_path / "l.json", "h1").charge(run="abc", experiment="exp", epsilon=1.25, delta=1e-5, steps=3, budget=5)
    result = runner.invoke(app, ["ledger", "show", str(tmp_path / "l.json"), "--hospital-id", "h1", "--budget", "5"])
    assert result.exit_code == 0 and "total epsilon spent: 1.250, 3.750 left of 5" in result.output
    _one_error_line(runner.invoke(app, ["ledger", "show", str(tmp_path / "l.json"), "--hospital-id", "h2"]))


def test_ledger_show_of_a_mistyped_path_is_an_error_not_an_empty_ledger(tmp_path: Path) -> None:
    line = _one_error_line(runner.invoke(app, ["ledger", "show", str(tmp_path / "typo.json"), "--hospital-id", "h1"]))
    assert f"no such ledger file: {tmp_path / 'typo.json'}" in line and "nothing spent" not in line
    line = _one_error_line(runner.invoke(app, ["ledger", "show", str(tmp_path / "nope" / "l.json"), "--hospital-id", "h1",
                                               "--empty-ok"]))
    assert f"nor its folder {tmp_path / 'nope'}" in line
    empty = runner.invoke(app, ["ledger", "show", str(tmp_path / "l.json"), "--hospital-id", "h1", "--empty-ok"])
    assert empty.exit_code == 0 and "no charges yet" in empty.output


def test_run_with_a_missing_hospital_file_fails_before_starting_flower(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_dict([Path("a.csv"), Path("gone.csv")])))
    line = _one_error_line(runner.invoke(app, ["experiment", "run", str(tmp_path / "spec.yaml")]))
    assert f"hospital gone: no file at {tmp_path / 'gone.csv'}" in line


def test_image_hospitals_are_checked_with_their_class_mix(tmp_path: Path) -> None:
    made = runner.invoke(app, ["data", "synth-images", "--hospitals", "2", "--images", "60", "--out", str(tmp_path)])
    assert made.exit_code == 0, made.output
    spec = {"name": "imgs", "data": {"modality": "images", "classes": ["normal", "nodule", "opacity"],
                                     "hospitals": [{"id": "a", "path": "hospital-01"}, {"id": "b", "path": "hospital-02"}]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert checked.exit_code == 0 and checked.output.count("held-out images (normal ") == 2, checked.output
    labels = tmp_path / "hospital-01" / "labels.csv"
    rows = labels.read_text().splitlines()
    cells = rows[1].split(",")
    cells[rows[0].split(",").index("label")] = "pneumonia"  # a label outside the spec's classes
    rows[1] = ",".join(cells)
    labels.write_text("\n".join(rows) + "\n")
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    errors = [line for line in checked.output.splitlines() if line.startswith("error: ")]
    assert checked.exit_code == 1 and len(errors) == 1, checked.output
    assert "hospital-01/labels.csv" in errors[0] and "mislabelled" in errors[0] and "pneumonia" in errors[0]
    assert "b: ok," in checked.output  # the other hospital is checked before the exit


def test_supernode_refuses_a_budget_that_is_not_finite_and_an_unknown_statistics_policy(tmp_path: Path) -> None:
    data = tmp_path / "h.csv"
    data.write_text("patient_id,age\n1,50\n")
    base = ["federation", "supernode", "--superlink", "127.0.0.1:9", "--hospital-id", "h", "--data-path", str(data)]
    for budget in ("inf", "nan", "-2"):
        line = _one_error_line(runner.invoke(app, [*base, "--privacy-budget", budget]))
        assert "--privacy-budget must be a positive, finite epsilon" in line
    line = _one_error_line(runner.invoke(app, [*base, "--privacy-budget", "3", "--statistics", "exact"]))
    assert "--statistics must be dp or refuse" in line


def test_experiment_validate_lists_every_problem_one_per_line(tmp_path: Path) -> None:
    bad = spec_dict([Path("a.csv"), Path("b.csv")], training={"rounds": -1, "epochs": 2}, privacy={"target_delta": 3})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["experiment", "validate", str(tmp_path / "bad.yaml")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "more problems" not in result.output
    assert [line.split(": ")[2] for line in lines] == ["training.rounds", "training.epochs", "privacy.target_delta"]


def _messy_hospitals(tmp_path: Path) -> list[Path]:
    """Three hospitals; the second writes smoking as 1.0/2.0, has a code 'x' and a cholesterol of 0."""
    paths = []
    for h, (spell, extra) in enumerate([("{}", None), ("{}.0", "x"), (" {} ", None)]):
        lines = ["patient_id,age,sex,smoking,cardiac_event,part"]
        for i in range(40):
            smoking = extra if extra and i < 6 else spell.format(i % 3)
            age = 0 if h == 1 and i < 4 else 40 + i
            lines.append(f"p{h}-{i},{age},{'FM'[i % 2]},{smoking},{i % 2},{['train', 'Val', 'TEST', 'train'][i % 4]}")
        path = tmp_path / f"h{h + 1}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def test_data_check_reports_split_missing_codes_and_unshared_categories(tmp_path: Path) -> None:
    paths = _messy_hospitals(tmp_path)
    data = {"numeric": ["age"], "categorical": ["sex", "smoking"], "ranges": {"age": [0, 120]}, "split_column": "part",
            "missing_codes": {"age": [0]}, "categories": {"smoking": [0, 1, 2]}}
    spec = spec_dict(paths, data=data, strategy={"min_hospitals": 2})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("patients: train 20, val 10, test 10 (split from column 'part')") == 3, checked.output
    assert "h2: missing codes turned values into missing: age 4" in checked.output
    # canonicalisation is said, never silent: which spellings were read as which value
    assert "h2: smoking read as canonical values: '0.0' -> '0' (12), '1.0' -> '1' (11), '2.0' -> '2' (11)" in checked.output
    assert "h3: smoking read as canonical values: ' 0 ' -> '0' (14), ' 1 ' -> '1' (13), ' 2 ' -> '2' (13)" in checked.output
    assert "h1: smoking read as" not in checked.output and "sex read as" not in checked.output
    assert "warning: h2: smoking: 1 value outside the declared list: 'x' (6)" in checked.output
    assert checked.output.count("warning: h") == 4  # the small test parts, and h2's 'x'
    spec["data"]["unknown_categories"] = "refuse"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    refused = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert refused.exit_code == 1
    assert "error: h2: smoking: 1 value outside the declared list: 'x' (6) (data.unknown_categories: refuse)" \
        in refused.output


def test_serve_up_writes_the_packaged_config_pointed_at_the_models(isolated_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_api.cli import serve
    from serving import local_config

    started: list[list[str]] = []
    monkeypatch.setattr(serve, "exec_server", started.append)
    monkeypatch.setattr(local_config, "servable_version", lambda uri, model, alias: "7")
    monkeypatch.setattr(local_config, "vision_to_serve", lambda uri, model, alias: (None, f"No {model}@{alias}: serving "
                                                                                      "without the vision application"))
    result = runner.invoke(app, ["serve", "up", "--model", "m", "--alias", "staging", "--port", "8123",
                                 "--tracking-uri", "sqlite:///x.db"])
    assert result.exit_code == 0, result.output
    assert "No chest-xray@staging: serving without the vision application" in result.output
    assert "Serving m@staging (version 7) on http://127.0.0.1:8123/risk" in result.output
    written = isolated_home / "serve" / "serve_config.yaml"
    assert started == [[str(Path(sys.executable).parent / "serve"), "run", str(written)]]
    config = yaml.safe_load(written.read_text())
    assert config["http_options"]["port"] == 8123 and [a["name"] for a in config["applications"]] == ["risk"]
    assert {k: config["applications"][0]["args"][k] for k in ("model_name", "alias", "tracking_uri")} == {
        "model_name": "m", "alias": "staging", "tracking_uri": "sqlite:///x.db"}
    assert config["applications"][0]["args"]["poll_seconds"] == 5  # the rest of the packaged config kept


def test_the_serve_config_keeps_vision_when_it_is_served() -> None:
    from serving.local_config import PACKAGED_CONFIG, local_serve_config

    config = local_serve_config(PACKAGED_CONFIG, port=9000, tracking_uri="u", alias="production", risk_model="r",
                                vision_model="v")
    assert [(a["name"], a["args"]["model_name"], a["args"]["tracking_uri"]) for a in config["applications"]] == [
        ("risk", "r", "u"), ("vision", "v", "u")]


def test_a_bug_keeps_its_traceback_and_only_the_users_own_paths_are_one_line(tmp_path: Path) -> None:
    import typer

    from platform_api.cli.output import one_line_errors

    elsewhere = tmp_path / "not-given.txt"

    @one_line_errors
    def read(path: Path, other: bool = False) -> None:
        (elsewhere if other else path).read_text()

    @one_line_errors
    def broken() -> None:
        raise ValueError("a bug, not a user error")

    local = typer.Typer()
    local.command("read")(read)
    local.command("broken")(broken)
    given = tmp_path / "given" / "file.csv"
    line = _one_error_line(runner.invoke(local, ["read", str(given)]))
    assert "No such file or directory" in line and str(given) in line
    failed = runner.invoke(local, ["read", str(given), "--other"])  # the OS refusing a path the user did not give
    assert isinstance(failed.exception, FileNotFoundError) and "error:" not in failed.output
    bug = runner.invoke(local, ["broken"])
    assert isinstance(bug.exception, ValueError) and bug.exception.__traceback__ is not None and "error:" not in bug.output
