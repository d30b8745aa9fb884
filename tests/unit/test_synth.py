"""Unit tests for the synthetic hospital generator (training.tabular.synth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.tabular.synth import (
    FEATURES_CATEGORICAL,
    FEATURES_NUMERIC,
    LABEL,
    PATIENT_ID,
    SyntheticHospital,
    synthesize_hospitals,
)

EXPECTED_COLUMNS = [
    "patient_id", "age", "sex", "systolic_bp", "cholesterol", "glucose",
    "heart_rate", "bmi", "smoking", "true_risk", "cardiac_event",
]
REQUIRED = ["patient_id", "age", "sex", "true_risk", "cardiac_event"]
N_HOSPITALS = 5
N_PATIENTS = 20_000


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[SyntheticHospital], pd.DataFrame]:
    out = tmp_path_factory.mktemp("cohort")
    hospitals = synthesize_hospitals(n_hospitals=N_HOSPITALS, n_patients=N_PATIENTS, seed=7, out_dir=out)
    frames = [pd.read_csv(h.path).assign(hospital=h.hospital_id) for h in hospitals]
    return hospitals, pd.concat(frames, ignore_index=True)


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, file_format: str) -> None:
    kwargs = dict(n_hospitals=3, n_patients=600, seed=11, file_format=file_format)
    synthesize_hospitals(out_dir=tmp_path / "a", **kwargs)
    synthesize_hospitals(out_dir=tmp_path / "b", **kwargs)
    first, second = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert set(first) == {f"hospital-0{i}.{file_format}" for i in (1, 2, 3)} | {"ground_truth.json"}
    assert first == second


def test_different_seed_differs(tmp_path: Path) -> None:
    a = synthesize_hospitals(n_hospitals=3, n_patients=600, seed=1, out_dir=tmp_path / "a")
    b = synthesize_hospitals(n_hospitals=3, n_patients=600, seed=2, out_dir=tmp_path / "b")
    assert all(x.path.read_bytes() != y.path.read_bytes() for x, y in zip(a, b))


def test_no_temp_files_left_and_paths_absolute(tmp_path: Path) -> None:
    hospitals = synthesize_hospitals(n_hospitals=2, n_patients=100, seed=0, out_dir=tmp_path / "new" / "dir")
    out = tmp_path / "new" / "dir"
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth.json", "hospital-01.csv", "hospital-02.csv"]
    assert all(h.path.is_absolute() and h.path.parent == out.resolve() for h in hospitals)


def test_sizes_sum_to_total_and_differ(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    hospitals, data = cohort
    sizes = [h.n_patients for h in hospitals]
    assert [h.hospital_id for h in hospitals] == [f"hospital-0{i}" for i in range(1, N_HOSPITALS + 1)]
    assert sum(sizes) == N_PATIENTS == len(data)
    assert min(sizes) >= 20
    assert len(set(sizes)) == N_HOSPITALS
    assert max(sizes) > 1.3 * min(sizes)
    assert data.groupby("hospital").size().to_dict() == {h.hospital_id: h.n_patients for h in hospitals}


def test_minimum_size_is_respected(tmp_path: Path) -> None:
    hospitals = synthesize_hospitals(n_hospitals=4, n_patients=80, seed=3, out_dir=tmp_path)
    assert [h.n_patients for h in hospitals] == [20, 20, 20, 20]
    assert all(len(pd.read_csv(h.path)) == 20 for h in hospitals)


def test_schema_ids_and_dtypes(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    hospitals, data = cohort
    for h in hospitals:
        frame = pd.read_csv(h.path)
        assert list(frame.columns) == EXPECTED_COLUMNS
        assert frame[LABEL].dtype.kind == "i" and frame["age"].dtype.kind == "i"
    assert set(FEATURES_NUMERIC) | set(FEATURES_CATEGORICAL) | {PATIENT_ID, LABEL, "true_risk"} == set(
        EXPECTED_COLUMNS
    )
    assert data[PATIENT_ID].is_unique
    assert data[PATIENT_ID].str.fullmatch(r"h\d{2}-\d{6}").all()


def test_values_within_plausible_ranges(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    bounds = {
        "age": (18, 95), "systolic_bp": (85, 220), "cholesterol": (2.5, 10.0),
        "glucose": (60, 350), "heart_rate": (40, 160), "bmi": (15.0, 55.0), "true_risk": (0.0, 1.0),
    }
    for column, (low, high) in bounds.items():
        values = data[column].dropna()
        assert values.between(low, high).all(), column
        assert values.std() > 0, column
    assert set(data["sex"]) == {"F", "M"}
    assert set(data["smoking"].dropna()) == {"never", "former", "current"}
    assert set(data[LABEL]) == {0, 1}
    chol, bmi = data["cholesterol"].dropna(), data["bmi"].dropna()
    assert np.allclose(chol, chol.round(2)) and np.allclose(bmi, bmi.round(1))
    assert np.allclose(data["true_risk"], data["true_risk"].round(4))


def test_clinical_correlations(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    assert data["age"].corr(data["systolic_bp"]) > 0.2
    assert data["bmi"].corr(data["systolic_bp"]) > 0.1
    assert data["bmi"].corr(data["glucose"]) > 0.2


def test_case_mix_differs_between_hospitals(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    by_site = data.groupby("hospital")
    assert by_site["age"].mean().max() - by_site["age"].mean().min() > 3.0
    current = by_site["smoking"].apply(lambda s: (s == "current").mean())
    assert current.max() - current.min() > 0.03


def test_prevalence_differs_and_is_plausible(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    hospitals, data = cohort
    prevalences = [h.prevalence for h in hospitals]
    observed = data.groupby("hospital")[LABEL].mean()
    for h in hospitals:
        assert h.prevalence == pytest.approx(observed[h.hospital_id])
        assert h.mean_true_risk == pytest.approx(data.loc[data.hospital == h.hospital_id, "true_risk"].mean())
        assert 0.03 <= h.prevalence <= 0.45
    assert max(prevalences) - min(prevalences) > 0.03
    assert 0.08 <= data[LABEL].mean() <= 0.30


def test_missingness_only_in_optional_columns(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    assert not data[REQUIRED].isna().any().any()
    rates = data[["systolic_bp", "cholesterol", "glucose", "heart_rate", "bmi", "smoking"]].isna().mean()
    assert (rates > 0).sum() >= 4
    assert (rates < 0.2).all()
    per_site = data.groupby("hospital")["glucose"].apply(lambda s: s.isna().mean())
    assert per_site.max() - per_site.min() > 0.01


def test_missing_values_are_empty_csv_cells(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    hospitals, _ = cohort
    raw = hospitals[0].path.read_text().splitlines()
    assert any(",," in line for line in raw[1:])
    assert not any("nan" in line.lower() for line in raw)


def test_cholesterol_missing_more_often_in_younger(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    missing = data["cholesterol"].isna()
    assert missing[data["age"] < 45].mean() > 2 * missing[data["age"] >= 65].mean()


def test_true_risk_is_informative(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    _, data = cohort
    assert roc_auc_score(data[LABEL], data["true_risk"]) > 0.7
    assert data["true_risk"].mean() == pytest.approx(data[LABEL].mean(), abs=0.02)


def test_ground_truth_json(cohort: tuple[list[SyntheticHospital], pd.DataFrame]) -> None:
    hospitals, _ = cohort
    truth = json.loads((hospitals[0].path.parent / "ground_truth.json").read_text())
    coefficients = truth["risk_model"]["coefficients"]
    assert {"age", "systolic_bp", "cholesterol", "glucose", "smoking_current", "sex_male"} <= set(coefficients)
    assert all(value > 0 for value in coefficients.values())
    assert set(truth["hospitals"]) == {h.hospital_id for h in hospitals}
    profiles = [site["profile"] for site in truth["hospitals"].values()]
    assert all(-6 <= p["sbp_offset"] <= 6 and 0.93 <= p["glucose_factor"] <= 1.07 for p in profiles)
    assert len({p["intercept_shift"] for p in profiles}) == N_HOSPITALS


def test_parquet_output_matches_csv(tmp_path: Path) -> None:
    kwargs = dict(n_hospitals=2, n_patients=400, seed=5)
    as_csv = synthesize_hospitals(out_dir=tmp_path / "csv", **kwargs)
    as_parquet = synthesize_hospitals(out_dir=tmp_path / "pq", file_format="parquet", **kwargs)
    for c, p in zip(as_csv, as_parquet):
        assert p.path.suffix == ".parquet"
        frame = pd.read_parquet(p.path).replace({None: np.nan})  # parquet string nulls read as None
        assert list(frame.columns) == EXPECTED_COLUMNS
        assert frame["cholesterol"].isna().any() or frame["glucose"].isna().any()
        pd.testing.assert_frame_equal(frame, pd.read_csv(c.path), check_dtype=False)
        assert p.prevalence == c.prevalence


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_hospitals=0, n_patients=100), "n_hospitals"),
        (dict(n_hospitals=3, n_patients=59), "n_patients"),
        (dict(n_hospitals=2, n_patients=100, file_format="json"), "file_format"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize_hospitals(seed=0, out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_messy_sites_keep_the_clean_values_and_add_the_quirks(tmp_path: Path) -> None:
    """Issue 11: one site spells categories its own way, one codes a missing lab value as 0,
    every file has a fixed split column; the drawn patients are those of the clean cohort."""
    from training.tabular.synth import SMOKING_CODES, Messiness

    clean = synthesize_hospitals(n_hospitals=3, n_patients=900, seed=3, out_dir=tmp_path / "clean")
    messy = synthesize_hospitals(n_hospitals=3, n_patients=900, seed=3, out_dir=tmp_path / "messy",
                                 messiness=Messiness(respell_site=2, split_column="split", missing_code_site=3))
    for index, (c, m) in enumerate(zip(clean, messy), start=1):
        a, b = pd.read_csv(c.path, dtype=str), pd.read_csv(m.path, dtype=str)
        assert list(b.columns) == EXPECTED_COLUMNS + ["split"]
        assert set(b["split"]) == {"train", "val", "test"} and (b["split"] == "train").mean() > 0.45
        assert a["true_risk"].equals(b["true_risk"]) and a[LABEL].equals(b[LABEL]) and a["age"].equals(b["age"])
        codes = {k: str(v) for k, v in SMOKING_CODES.items()}
        if index == 2:  # " M " and "3.0"
            assert set(b["sex"]) == {" M ", " F "}
            assert set(b["smoking"].dropna()) == {f"{v}.0" for v in codes.values()}
        else:
            assert set(b["sex"]) == {"M", "F"}
            assert (b["smoking"].dropna() == a["smoking"].dropna().map(codes)).all()
        if index == 3:  # missing cholesterol written as 0
            assert b["cholesterol"].notna().all() and (b["cholesterol"] == "0").sum() == a["cholesterol"].isna().sum() > 0
        else:
            assert b["cholesterol"].isna().sum() == a["cholesterol"].isna().sum()
    truth = json.loads((tmp_path / "messy" / "ground_truth.json").read_text())
    assert truth["messiness"]["respell_site"] == 2
    assert "messiness" not in json.loads((tmp_path / "clean" / "ground_truth.json").read_text())


@pytest.mark.parametrize(
    ("messiness", "message"),
    [
        ({"respell_site": 4}, "respell_site must be between 1 and 3"),
        ({"missing_code_site": 0}, "missing_code_site must be between 1 and 3"),
        ({"split_column": "age"}, "split_column 'age' is already a column"),
        ({"split_fractions": (0.5, 0.1, 0.1)}, "split_fractions must be three shares"),
        ({"missing_code_column": "sex"}, "missing_code_column must be one of"),
    ],
)
def test_bad_messiness_is_refused(tmp_path: Path, messiness: dict, message: str) -> None:
    from training.tabular.synth import Messiness

    with pytest.raises(ValueError, match=message):
        synthesize_hospitals(n_hospitals=3, n_patients=300, seed=1, out_dir=tmp_path, messiness=Messiness(**messiness))


def test_cli_writes_messy_sites(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from platform_api.cli import app

    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path), "--respell-site", "1",
                                      "--split-column", "part", "--missing-code-site", "2", "--missing-code", "-1"])
    assert result.exit_code == 0, result.output
    first, second = (pd.read_csv(tmp_path / f"hospital-0{i}.csv", dtype=str) for i in (1, 2))
    assert set(first["sex"]) == {" M ", " F "} and "part" in first.columns
    assert (second["cholesterol"] == "-1").any() and second["cholesterol"].notna().all()
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--respell-site", "9"])
    assert result.exit_code == 1 and "respell_site must be between 1 and 3" in result.output
