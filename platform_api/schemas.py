"""Request and response schemas of the platform API, named by role."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, create_model, field_validator

from feature_store.definitions import RANGES, UNITS, VIEWS

__all__ = [
    "AlertPage", "AlertPublic", "AuditEventPublic", "AuditPage", "BatchPredictionCreate", "ImagePredictionPage",
    "ImagePredictionPublic", "ObservationCreate",
    "ObservationResult", "PredictionPage", "PredictionPublic", "TwinCreate", "TwinDetail", "TwinPage", "TwinPublic",
    "TwinUpdate", "UtcDateTime",
]


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (the database stores UTC; SQLite drops the zone on the way back)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A timestamp the API answers with: always UTC, written ``2026-01-31T12:00:00Z`` (``date-time``).
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]

PatientId = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class TwinBase(BaseModel):
    """Fields a caller may set on a twin."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = Field(default=None, max_length=200)


class TwinCreate(TwinBase):
    """A new twin: the patient's id within the caller's tenant."""

    patient_id: str = PatientId


class TwinUpdate(TwinBase):
    """Changes to a twin."""


class TwinPublic(BaseModel):
    """A twin as the API returns it."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    tenant_id: str
    patient_id: str
    display_name: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime


class TwinPage(BaseModel):
    """One page of twins."""

    items: list[TwinPublic]
    total: int
    limit: int
    offset: int


class AuditEventPublic(BaseModel):
    """One audit event."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    at: UtcDateTime
    actor: str
    role: str
    tenant_id: str | None
    patient_id: str | None
    action: str
    outcome: str
    hash: str


class AuditPage(BaseModel):
    """One page of the audit trail, newest first."""

    items: list[AuditEventPublic]
    total: int
    limit: int
    offset: int


class PredictionPublic(BaseModel):
    """A stored prediction: the risk, the model version that made it and the inputs used."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())
    id: str
    twin_id: str
    risk: float
    model_name: str
    model_version: str
    inputs: dict[str, Any]
    created_at: UtcDateTime
    alert_priority: str | None = None
    decision: bool | None = Field(default=None, description="risk >= threshold (null on a stored prediction read back)")
    threshold: float | None = Field(default=None, description="the model version's decision threshold (docs/imbalance.md)")


class ImagePredictionPublic(BaseModel):
    """An image classified for a twin: the label, each class's probability, the model version."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())
    id: str
    twin_id: str
    label: str
    probability: float
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    image_sha256: str
    image_bytes: int
    content_type: str
    created_at: UtcDateTime


class ImagePredictionPage(BaseModel):
    """One page of a twin's image predictions, newest first."""

    items: list[ImagePredictionPublic]
    total: int
    limit: int
    offset: int


class PredictionPage(BaseModel):
    """One page of a twin's prediction history, newest first."""

    items: list[PredictionPublic]
    total: int
    limit: int
    offset: int


class TwinDetail(TwinPublic):
    """A twin with its current features (online store) and latest prediction.

    ``features`` is None, with the reason in ``features_unavailable``, when the feature
    store cannot be reached: the twin's identity does not depend on it.
    """

    features: dict[str, Any] | None
    features_unavailable: str | None = None
    latest_prediction: PredictionPublic | None


class BatchPredictionCreate(BaseModel):
    """Twins to score at once."""

    model_config = ConfigDict(extra="forbid")
    twin_ids: list[str] = Field(min_length=1, max_length=1000)


def _observed_values() -> type[BaseModel]:
    """The observable features (vitals and labs): each a finite JSON number (not a string,
    not a boolean) within the plausible range declared with its feature view."""
    fields: dict[str, Any] = {}
    for view, columns in VIEWS.items():
        for column in columns if view != "demographics" else ():
            low, high = RANGES[column]
            fields[column] = (float, Field(default=None, ge=low, le=high, strict=True, allow_inf_nan=False,
                                           description=f"{UNITS[column]}, {low:g} to {high:g} ({view})",
                                           json_schema_extra=_no_default))
    config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    return create_model("ObservedValues", __config__=config, __doc__=_observed_values.__doc__, **fields)


def _no_default(schema: dict[str, Any]) -> None:
    """An absent feature is not observed; the schema shows no default (null is not a number)."""
    schema.pop("default", None)


ObservedValues = _observed_values()


class ObservationCreate(BaseModel):
    """New vitals or labs of a patient: finite values within each feature's plausible range
    (declared with the feature views), observed at a time with a time zone (default: now)."""

    model_config = ConfigDict(extra="forbid")
    values: ObservedValues  # type: ignore[valid-type]
    observed_at: AwareDatetime | None = Field(
        default=None, description="When it was observed; a time zone is required (a naive time answers 422). Stored in UTC.")

    @field_validator("values")
    @classmethod
    def _something_observed(cls, values: BaseModel) -> BaseModel:
        if not values.model_fields_set:
            raise ValueError(f"at least one value is required (of {', '.join(type(values).model_fields)})")
        return values

    @field_validator("observed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else value.astimezone(UTC)  # the feature store refuses future times


class ObservationResult(BaseModel):
    """What the observation changed: the views whose current values it became, and the
    features it did not change because a newer observation is current (it is kept in the
    offline history)."""

    updated_views: list[str]
    not_applied: dict[str, str] = Field(default_factory=dict)
    observed_at: datetime


class AlertPublic(BaseModel):
    """An alert raised by a high-risk prediction."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    prediction_id: str
    twin_id: str
    priority: str
    status: str
    created_at: UtcDateTime
    acknowledged_at: UtcDateTime | None
    acknowledged_by: str | None


class AlertPage(BaseModel):
    """One page of alerts, newest first."""

    items: list[AlertPublic]
    total: int
    limit: int
    offset: int
