"""Standard codes of a model's outcome and inputs (the spec's ``fhir`` section), as its FHIR output uses them (docs/fhir.md)."""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiments.errors import FhirSectionError

__all__ = [
    "DEFAULT_FEATURE_CODES",
    "LOINC",
    "SNOMED",
    "UCUM",
    "Coding",
    "FeatureCoding",
    "FhirSpec",
    "ModelTerminology",
    "code_problem",
    "terminology_from_spec",
    "version_terminology",
]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"
#: The registry tag holding a version's decision threshold (probability in (0, 1)).
THRESHOLD_TAG = "decision_threshold"
RULE_TAG = "decision_rule"

_LOINC_CODE = re.compile(r"(\d{1,7})-(\d)")
_FHIR_CODE = re.compile(r"[^\s]+( [^\s]+)*")
_URI = re.compile(r"(https?://[^\s]+|urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[^\s]+)")

# Verhoeff's dihedral-group tables (SNOMED CT identifiers end in a Verhoeff check digit).
_D = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
      (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
      (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
      (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
_P = ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
      (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
      (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8))


def _verhoeff_ok(digits: str) -> bool:
    check = 0
    for i, digit in enumerate(reversed(digits)):
        check = _D[check][_P[i % 8][int(digit)]]
    return check == 0


def _loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 check digit of the part before the hyphen."""
    from_right = number[::-1]
    odd = int(from_right[0::2][::-1] or "0") * 2  # 1st, 3rd, ... digits from the right, doubled
    even = from_right[1::2][::-1]
    total = sum(int(c) for c in even + str(odd))
    return (10 - total % 10) % 10


def code_problem(system: str, code: str) -> str | None:
    """Why ``code`` is no valid code of ``system`` (LOINC, SNOMED CT), else None."""
    if system == LOINC:
        match = _LOINC_CODE.fullmatch(code)
        if match is None:
            return f"{code!r} is not a LOINC code (digits, a hyphen and a check digit, e.g. 8480-6)"
        if _loinc_check_digit(match.group(1).lstrip("0") or "0") != int(match.group(2)):
            return f"{code!r} fails the LOINC check digit (mistyped?)"
    elif system == SNOMED:
        if not (code.isdigit() and 6 <= len(code) <= 18 and code[0] != "0"):
            return f"{code!r} is not a SNOMED CT identifier (6 to 18 digits)"
        if not _verhoeff_ok(code):
            return f"{code!r} fails the SNOMED CT check digit (mistyped?)"
    elif not _FHIR_CODE.fullmatch(code):
        return f"{code!r} is not a FHIR code (no leading, trailing or double spaces)"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Coding(_Strict):
    """One code of a code system: ``{system: http://loinc.org, code: 8480-6, display: ...}``."""

    system: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=100)
    display: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("system")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        if not _URI.fullmatch(value):
            raise ValueError(f"{value!r} is not an absolute URI (e.g. {SNOMED} or {LOINC})")
        return value

    @model_validator(mode="after")
    def _valid_code(self) -> Coding:
        problem = code_problem(self.system, self.code)
        if problem is not None:
            raise ValueError(problem)
        return self

    def fhir(self) -> dict[str, str]:
        """The FHIR ``Coding`` (JSON)."""
        return {k: v for k, v in (("system", self.system), ("code", self.code), ("display", self.display)) if v}


class FeatureCoding(Coding):
    """A feature's observation code, its UCUM unit (numbers) and its values' codes (categories)."""

    unit: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[^\s]+$",
                             description="UCUM unit of a numeric feature, e.g. mm[Hg], mg/dL, a (years)")
    values: dict[str, Coding] = {}


class FhirSpec(_Strict):
    """The spec's ``fhir`` section: how predictions of the registered model are coded.

    Attributes:
        outcome: The code of what the label means (e.g. SNOMED CT); absent: the outcome is
            text only (the label's name), never a made-up code.
        horizon_days: The window after the prediction in which the outcome is counted
            (``prediction.whenPeriod``); absent: no window is stated.
        features: Feature column -> its observation code (overrides the built-in codes).
    """

    outcome: Coding | None = None
    horizon_days: int | None = Field(default=None, ge=1, le=36500)
    features: dict[str, FeatureCoding] = {}


def _loinc(code: str, display: str, unit: str | None = None, values: dict[str, Coding] | None = None) -> FeatureCoding:
    return FeatureCoding(system=LOINC, code=code, display=display, unit=unit, values=values or {})


#: LOINC codes of the platform's feature-store columns, in the feature store's units.
DEFAULT_FEATURE_CODES: dict[str, FeatureCoding] = {
    "age": _loinc("30525-0", "Age", "a"),
    "sex": _loinc("46098-0", "Sex", values={
        "F": Coding(system=ADMINISTRATIVE_GENDER, code="female", display="Female"),
        "M": Coding(system=ADMINISTRATIVE_GENDER, code="male", display="Male"),
    }),
    "smoking": _loinc("72166-2", "Tobacco smoking status", values={
        "never": Coding(system=SNOMED, code="266919005", display="Never smoked tobacco"),
        "former": Coding(system=SNOMED, code="8517006", display="Ex-smoker"),
        "current": Coding(system=SNOMED, code="77176002", display="Smoker"),
    }),
    "systolic_bp": _loinc("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "heart_rate": _loinc("8867-4", "Heart rate", "/min"),
    "bmi": _loinc("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2"),
    "cholesterol": _loinc("14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L"),
    "glucose": _loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL"),
}


@dataclass(frozen=True)
class ModelTerminology:
    """What the FHIR output of one model version says about its outcome and inputs.

    Attributes:
        outcome: The outcome's code, or None (text only).
        outcome_text: The outcome in words (the code's display, else the label's name).
        horizon_days: The prediction window, or None.
        features: Feature -> its code (spec codes over the built-in ones); others are text only.
        decision_threshold: The version's decision threshold (registry tag), or None.
        decision_rule: How the threshold was chosen (registry tag), or None.
    """

    outcome: Coding | None = None
    outcome_text: str = "the model's outcome"
    horizon_days: int | None = None
    features: Mapping[str, FeatureCoding] = field(default_factory=lambda: dict(DEFAULT_FEATURE_CODES))
    decision_threshold: float | None = None
    decision_rule: str | None = None


def _threshold(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and 0.0 < number < 1.0 else None


def terminology_from_spec(spec: Mapping[str, Any] | None, tags: Mapping[str, str] | None = None) -> ModelTerminology:
    """The terminology of a version from its run's spec (JSON, as logged) and version tags.

    A spec without a ``fhir`` section gets the built-in feature codes and a text-only outcome.

    Raises:
        FhirSectionError: the spec's ``fhir`` section is not valid (naming the field).
    """
    spec = spec or {}
    try:
        section = FhirSpec.model_validate(spec.get("fhir") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FhirSectionError(f"fhir.{where}: {first['msg'].removeprefix('Value error, ')}") from err
    label = (spec.get("data") or {}).get("label")
    text = section.outcome.display if section.outcome and section.outcome.display else None
    tags = tags or {}
    threshold = _threshold(tags.get(THRESHOLD_TAG))
    return ModelTerminology(
        outcome=section.outcome,
        outcome_text=text or (str(label).replace("_", " ") if label else "the model's outcome"),
        horizon_days=section.horizon_days,
        features={**DEFAULT_FEATURE_CODES, **section.features},
        decision_threshold=threshold,
        decision_rule=(tags.get(RULE_TAG) or None) if threshold is not None else None,
    )


def version_terminology(client: Any, name: str, version: str) -> ModelTerminology:
    """The terminology of a registered version: its run's ``spec.json`` and its tags.

    ``client`` is an ``MlflowClient``. A version whose run kept no spec gets the defaults.

    Raises:
        mlflow.exceptions.MlflowException: the registry or artifact store did not answer,
            or the version does not exist.
        FhirSectionError: the logged spec's ``fhir`` section is not valid.
    """
    mv = client.get_model_version(name, str(version))
    tags = dict(mv.tags or {})
    spec: dict[str, Any] | None = None
    run_id = mv.run_id or tags.get("run_id")
    if run_id and any(f.path == "spec.json" for f in client.list_artifacts(run_id)):
        with tempfile.TemporaryDirectory(prefix="bioverse-spec-") as tmp:
            spec = json.loads(Path(client.download_artifacts(run_id, "spec.json", tmp)).read_text())
    return terminology_from_spec(spec, tags)
