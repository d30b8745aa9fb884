"""Deterministic synthetic, non-IID cardiac-risk cohorts for a federation of hospitals."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.atomic_write import atomic_write
from training.errors import SynthOptionsError
from training.split_parts import PARTS

__all__ = [
    "COLUMNS",
    "FEATURES_CATEGORICAL",
    "FEATURES_NUMERIC",
    "FEATURE_RANGES",
    "LABEL",
    "PATIENT_ID",
    "SMOKING_CODES",
    "TRUE_RISK",
    "HospitalProfile",
    "Messiness",
    "SyntheticHospital",
    "draw_hospital_profile",
    "generate_hospital_frame",
    "synthesize_hospitals",
]

logger = logging.getLogger(__name__)

FEATURES_NUMERIC: tuple[str, ...] = ("age", "systolic_bp", "cholesterol", "glucose", "heart_rate", "bmi")
FEATURES_CATEGORICAL: tuple[str, ...] = ("sex", "smoking")
LABEL = "cardiac_event"
#: Plausible [min, max] of each numeric feature (the spec's ``data.ranges``): the DP
#: statistics round clips values to them. Cholesterol in mmol/L.
FEATURE_RANGES: dict[str, tuple[float, float]] = {
    "age": (18.0, 100.0), "systolic_bp": (70.0, 220.0), "cholesterol": (2.0, 10.0),
    "glucose": (50.0, 250.0), "heart_rate": (35.0, 140.0), "bmi": (14.0, 50.0),
}
PATIENT_ID = "patient_id"
TRUE_RISK = "true_risk"
COLUMNS: tuple[str, ...] = (PATIENT_ID, "age", "sex", "systolic_bp", "cholesterol", "glucose",
                            "heart_rate", "bmi", "smoking", TRUE_RISK, LABEL)

_FORMATS = {"csv", "parquet"}
_MIN_PER_HOSPITAL = 20
_DIRICHLET_ALPHA = 2.0
_MISSABLE: tuple[str, ...] = ("systolic_bp", "cholesterol", "glucose", "heart_rate", "bmi", "smoking")
_SMOKING_LEVELS: tuple[str, ...] = ("never", "former", "current")
#: How smoking is written when sites code it (``Messiness.respell_site``): never 1, former 2, current 3.
SMOKING_CODES: dict[str, int] = {"never": 1, "former": 2, "current": 3}

# Ground-truth logistic model on features standardised with fixed population references.
_REFERENCE: dict[str, tuple[float, float]] = {
    "age": (60.0, 15.0), "systolic_bp": (135.0, 20.0), "cholesterol": (5.2, 1.1),
    "glucose": (105.0, 30.0), "bmi": (27.5, 5.0), "heart_rate": (75.0, 12.0),
}
_COEFFICIENTS: dict[str, float] = {
    "age": 0.85, "systolic_bp": 0.45, "cholesterol": 0.35, "glucose": 0.40, "bmi": 0.20,
    "heart_rate": 0.15, "smoking_current": 0.75, "smoking_former": 0.30, "sex_male": 0.45,
}
_INTERCEPT = -2.6


@dataclass(frozen=True)
class HospitalProfile:
    """Case mix, risk shift, measurement shift and missingness of one hospital."""

    age_mean: float
    age_sd: float
    male_fraction: float
    smoking_probs: tuple[float, float, float]  # never, former, current
    intercept_shift: float
    sbp_offset: float
    glucose_factor: float
    cholesterol_offset: float
    missing_rates: dict[str, float]


@dataclass(frozen=True)
class Messiness:
    """What real sites do to a file (issue 11), applied after the patients are drawn, so the
    values of a messy cohort are those of the clean one with the same seed.

    Attributes:
        respell_site: This hospital (1-based) spells categories its own way: ``sex`` padded
            (``" M "``) and smoking codes as decimals (``"3.0"``). With it, every site writes
            smoking as the codes of `SMOKING_CODES` (``1``, ``2``, ``3``), as registries do.
        split_column: Add this column holding each patient's fixed part, ``train``, ``val``
            or ``test`` (drawn per patient with ``split_fractions``).
        split_fractions: Shares of train, val and test (summing to 1).
        missing_code_site: This hospital (1-based) writes a missing ``missing_code_column``
            as ``missing_code`` instead of an empty cell (cholesterol ``0``).
        missing_code: The code standing for "not measured".
        missing_code_column: The numeric column the code appears in.
    """

    respell_site: int | None = None
    split_column: str | None = None
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    missing_code_site: int | None = None
    missing_code: float = 0.0
    missing_code_column: str = "cholesterol"

    def check(self, n_hospitals: int) -> None:
        """Raise SynthOptionsError naming the field at fault."""
        for name in ("respell_site", "missing_code_site"):
            site = getattr(self, name)
            if site is not None and not 1 <= site <= n_hospitals:
                raise SynthOptionsError(f"{name} must be between 1 and {n_hospitals}, got {site}")
        if self.split_column is not None and self.split_column in COLUMNS:
            raise SynthOptionsError(f"split_column {self.split_column!r} is already a column of the file")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9 or fractions[0] == 0:
            raise SynthOptionsError(f"split_fractions must be three shares (train > 0, val, test) summing to 1, got {list(fractions)}")
        if self.missing_code_column not in _MISSABLE or self.missing_code_column == "smoking":
            raise SynthOptionsError(f"missing_code_column must be one of {[c for c in _MISSABLE if c != 'smoking']}, "
                             f"got {self.missing_code_column!r}")

    def apply(self, frame: pd.DataFrame, site: int, seed: int) -> pd.DataFrame:
        """The file hospital ``site`` (1-based) writes: ``frame`` with the quirks applied."""
        frame = frame.copy()
        if self.respell_site is not None:
            decimals = site == self.respell_site
            frame["smoking"] = [None if pd.isna(v) else (f"{SMOKING_CODES[v]}.0" if decimals else str(SMOKING_CODES[v]))
                                for v in frame["smoking"]]
            if decimals:
                frame["sex"] = [f" {v} " for v in frame["sex"]]
        if site == self.missing_code_site:
            column = self.missing_code_column
            frame[column] = frame[column].fillna(self.missing_code)
        if self.split_column is not None:  # an own stream: the drawn values stay those of the clean cohort
            rng = np.random.default_rng([seed, site, 11])
            frame[self.split_column] = np.asarray(PARTS, dtype=object)[
                rng.choice(3, size=len(frame), p=np.asarray(self.split_fractions))]
        return frame


@dataclass(frozen=True)
class SyntheticHospital:
    """Summary of one written synthetic hospital file."""

    hospital_id: str
    path: Path
    n_patients: int
    prevalence: float
    mean_true_risk: float


def draw_hospital_profile(rng: np.random.Generator) -> HospitalProfile:
    """Draw a random, plausible hospital profile.

    Args:
        rng: Random generator to draw from.

    Returns:
        A `HospitalProfile` with case-mix, shift and missingness parameters.
    """
    current = rng.uniform(0.08, 0.28)
    former = rng.uniform(0.15, 0.35)
    return HospitalProfile(
        age_mean=float(rng.uniform(50.0, 70.0)),
        age_sd=float(rng.uniform(11.0, 16.0)),
        male_fraction=float(rng.uniform(0.40, 0.60)),
        smoking_probs=(float(1.0 - current - former), float(former), float(current)),
        intercept_shift=float(np.clip(rng.normal(0.0, 0.3), -0.6, 0.6)),
        sbp_offset=float(rng.uniform(-6.0, 6.0)),
        glucose_factor=float(rng.uniform(0.93, 1.07)),
        cholesterol_offset=float(rng.uniform(-0.15, 0.15)),
        missing_rates={c: float(rng.uniform(0.0, 0.15)) for c in _MISSABLE},
    )


def _z(name: str, values: np.ndarray) -> np.ndarray:
    mean, sd = _REFERENCE[name]
    return (values - mean) / sd


def generate_hospital_frame(
    profile: HospitalProfile, n_patients: int, rng: np.random.Generator, *, id_prefix: str = "h01"
) -> pd.DataFrame:
    """Generate one hospital's patients: features, true risk and label.

    Risk is computed from the true physiological values; device/lab shifts and
    missingness are applied afterwards to the observed values only.

    Args:
        profile: Hospital parameters (see `draw_hospital_profile`).
        n_patients: Number of patients (rows) to generate.
        rng: Random generator; the same generator state gives the same frame.
        id_prefix: Prefix of the patient ids, e.g. ``"h01"`` -> ``"h01-000001"``.

    Returns:
        DataFrame with columns `COLUMNS`; missing feature values are NaN.
    """
    n = n_patients
    age = np.clip(np.rint(rng.normal(profile.age_mean, profile.age_sd, n)), 18, 95).astype(np.int64)
    male = rng.random(n) < profile.male_fraction
    smoking_idx = rng.choice(3, size=n, p=np.asarray(profile.smoking_probs))
    current = smoking_idx == 2
    bmi = np.clip(27.0 + 0.03 * (age - 55) + 0.5 * male + rng.normal(0.0, 5.0, n), 15.0, 55.0)
    sbp = np.clip(
        102.0 + 0.55 * age + 0.9 * (bmi - 27.0) + 4.0 * male + rng.normal(0.0, 14.0, n), 85.0, 220.0
    )
    chol = np.clip(5.0 + 0.012 * (age - 55) - 0.15 * male + 0.03 * (bmi - 27.0) + rng.normal(0.0, 1.0, n),
                   2.5, 10.0)
    log_glucose = np.log(92.0 + 2.0 * np.maximum(bmi - 22.0, 0.0) + 0.25 * (age - 40)) + rng.normal(0.0, 0.16, n)
    glucose = np.clip(np.exp(log_glucose), 60.0, 350.0)
    heart_rate = np.clip(73.0 + 4.0 * current + 0.3 * (bmi - 27.0) + rng.normal(0.0, 11.0, n), 40.0, 160.0)

    c = _COEFFICIENTS
    logit = (
        _INTERCEPT + profile.intercept_shift
        + c["age"] * _z("age", age) + c["systolic_bp"] * _z("systolic_bp", sbp)
        + c["cholesterol"] * _z("cholesterol", chol) + c["glucose"] * _z("glucose", glucose)
        + c["bmi"] * _z("bmi", bmi) + c["heart_rate"] * _z("heart_rate", heart_rate)
        + c["smoking_current"] * current + c["smoking_former"] * (smoking_idx == 1)
        + c["sex_male"] * male
    )
    risk = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n) < risk).astype(np.int64)

    frame = pd.DataFrame({
        PATIENT_ID: [f"{id_prefix}-{i:06d}" for i in range(1, n + 1)],
        "age": age,
        "sex": np.where(male, "M", "F").astype(object),
        "systolic_bp": np.clip(np.rint(sbp + profile.sbp_offset), 85, 220),
        "cholesterol": np.round(np.clip(chol + profile.cholesterol_offset, 2.5, 10.0), 2),
        "glucose": np.clip(np.rint(glucose * profile.glucose_factor), 60, 350),
        "heart_rate": np.rint(heart_rate),
        "bmi": np.round(bmi, 1),
        "smoking": np.asarray(_SMOKING_LEVELS, dtype=object)[smoking_idx],
        TRUE_RISK: np.round(risk, 4),
        LABEL: label,
    })
    _apply_missingness(frame, profile, rng)
    return frame.loc[:, list(COLUMNS)]


def _apply_missingness(frame: pd.DataFrame, profile: HospitalProfile, rng: np.random.Generator) -> None:
    """Blank out feature values in place: MCAR for most, MAR (younger -> more) for cholesterol."""
    age = frame["age"].to_numpy(dtype=float)
    for column in _MISSABLE:
        rate = profile.missing_rates[column]
        if column == "cholesterol":
            weight = 1.0 / (1.0 + np.exp((age - 50.0) / 8.0))
            prob = np.minimum(rate * weight / max(float(weight.mean()), 1e-9), 0.6)
        else:
            prob = np.full(len(frame), rate)
        mask = rng.random(len(frame)) < prob
        frame.loc[mask, column] = np.nan


def _split_sizes(n_patients: int, n_hospitals: int, rng: np.random.Generator) -> list[int]:
    """Uneven Dirichlet split with a floor of `_MIN_PER_HOSPITAL`, summing exactly to n_patients."""
    spare = n_patients - _MIN_PER_HOSPITAL * n_hospitals
    shares = rng.dirichlet(np.full(n_hospitals, _DIRICHLET_ALPHA)) * spare
    extra = np.floor(shares).astype(np.int64)
    leftover = spare - int(extra.sum())
    extra[np.argsort(-(shares - extra), kind="stable")[:leftover]] += 1
    return [int(_MIN_PER_HOSPITAL + e) for e in extra]


def _write_frame(frame: pd.DataFrame, path: Path, file_format: str) -> None:
    if file_format == "csv":  # "%.10g" writes whole-number floats as "132", NaN as an empty cell
        atomic_write(path, lambda p: frame.to_csv(p, index=False, lineterminator="\n", float_format="%.10g"))
    else:
        atomic_write(path, lambda p: frame.to_parquet(p, index=False, engine="pyarrow"))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def synthesize_hospitals(
    *, n_hospitals: int, n_patients: int, seed: int, out_dir: Path, file_format: str = "csv",
    messiness: Messiness | None = None,
) -> list[SyntheticHospital]:
    """Write one synthetic, non-IID patient file per hospital plus ``ground_truth.json``.

    Args:
        n_hospitals: Number of hospitals (>= 1).
        n_patients: TOTAL number of patients across all hospitals (>= 20 per hospital).
        seed: Seed; identical arguments give byte-identical files.
        out_dir: Output directory, created if missing.
        file_format: ``"csv"`` or ``"parquet"``.
        messiness: Site quirks to write (differently spelled categories, a split column, a
            missing-value code); None writes clean files.

    Returns:
        One `SyntheticHospital` per written file, ordered by hospital id.

    Raises:
        SynthOptionsError: If an argument is out of range (also a ValueError).
    """
    if n_hospitals < 1:
        raise SynthOptionsError(f"n_hospitals must be >= 1, got {n_hospitals}")
    if n_patients < _MIN_PER_HOSPITAL * n_hospitals:
        raise SynthOptionsError(f"n_patients must be >= {_MIN_PER_HOSPITAL} per hospital "
                         f"({_MIN_PER_HOSPITAL * n_hospitals} for {n_hospitals} hospitals), got {n_patients}")
    if file_format not in _FORMATS:
        raise SynthOptionsError(f"file_format must be one of {sorted(_FORMATS)}, got {file_format!r}")
    if messiness is not None:
        messiness.check(n_hospitals)

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root, *children = np.random.SeedSequence(seed).spawn(n_hospitals + 1)
    sizes = _split_sizes(n_patients, n_hospitals, np.random.default_rng(root))
    width = max(2, len(str(n_hospitals)))

    hospitals: list[SyntheticHospital] = []
    truth_sites: dict[str, dict[str, Any]] = {}
    for index, (size, child) in enumerate(zip(sizes, children), start=1):
        rng = np.random.default_rng(child)
        hospital_id = f"hospital-{index:0{width}d}"
        profile = draw_hospital_profile(rng)
        frame = generate_hospital_frame(profile, size, rng, id_prefix=f"h{index:0{width}d}")
        path = out / f"{hospital_id}.{file_format}"
        _write_frame(frame if messiness is None else messiness.apply(frame, index, seed), path, file_format)
        site = SyntheticHospital(hospital_id=hospital_id, path=path, n_patients=size,
                                 prevalence=float(frame[LABEL].mean()),
                                 mean_true_risk=float(frame[TRUE_RISK].mean()))
        hospitals.append(site)
        truth_sites[hospital_id] = {"file": path.name, "n_patients": size, "prevalence": site.prevalence,
                                    "mean_true_risk": site.mean_true_risk, "profile": asdict(profile)}
        logger.debug("wrote %s: %d patients, prevalence %.3f", path, size, site.prevalence)

    truth = {
        "seed": seed,
        "n_hospitals": n_hospitals,
        "n_patients": n_patients,
        "file_format": file_format,
        "label": LABEL,
        "risk_model": {
            "form": "true_risk = sigmoid(intercept + intercept_shift[hospital] + sum(coef * feature))",
            "intercept": _INTERCEPT,
            "coefficients": _COEFFICIENTS,
            "standardization": {k: {"mean": m, "sd": s} for k, (m, s) in _REFERENCE.items()},
            "binary_features": {"smoking_current": "smoking == 'current'", "smoking_former": "smoking == 'former'",
                                "sex_male": "sex == 'M'"},
            "note": "risk uses true values; sbp/glucose/cholesterol shifts affect observed values only",
        },
        "hospitals": truth_sites,
    }
    if messiness is not None:
        truth["messiness"] = asdict(messiness)
    text = json.dumps(_rounded(truth), indent=2, sort_keys=True) + "\n"
    atomic_write(out / "ground_truth.json", lambda p: p.write_text(text, encoding="utf-8"))
    logger.info("synthesized %d hospitals (%d patients) into %s", n_hospitals, n_patients, out)
    return hospitals
