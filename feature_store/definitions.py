"""Feast objects: entities, the demographics/vitals/labs views, push sources, on-demand derived features."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _metrics_stay_in_process() -> Iterator[None]:
    """Importing Feast sets PROMETHEUS_MULTIPROC(ESS)_DIR (for its Gunicorn feature server),
    which would switch every prometheus_client metric imported afterwards in this process,
    and in every child process, to shared mmap files. Fix prometheus_client's value class
    first and restore the environment after."""
    import prometheus_client.values  # noqa: F401 - chooses in-process values now

    keys = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


with _metrics_stay_in_process():
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Float32, Float64, String

__all__ = ["CATEGORIES", "FEATURE_COLUMNS", "RANGES", "UNITS", "VIEWS", "build_definitions", "offline_path"]

#: Feature view -> its raw columns, as the hospital data contract names them.
VIEWS: dict[str, tuple[str, ...]] = {
    "demographics": ("age", "sex", "smoking"),
    "vitals": ("systolic_bp", "heart_rate", "bmi"),
    "labs": ("cholesterol", "glucose"),
}
FEATURE_COLUMNS: tuple[str, ...] = tuple(c for cols in VIEWS.values() for c in cols)
#: Plausible values of each numeric feature (inclusive bounds), in the units of the data
#: contract. A value outside them is a unit mix-up or a typing error, never a patient: it
#: is refused on ingest and on observation, and a stored one stops a prediction. The
#: bounds travel with the feature views (Feast field tags), so a view change carries them.
RANGES: dict[str, tuple[float, float]] = {
    "age": (0.0, 130.0),           # years
    "systolic_bp": (40.0, 300.0),  # mmHg
    "heart_rate": (20.0, 300.0),   # beats per minute
    "bmi": (8.0, 150.0),           # kg/m^2
    "cholesterol": (0.5, 30.0),    # total cholesterol, mmol/L
    "glucose": (10.0, 2000.0),     # mg/dL
}
UNITS: dict[str, str] = {"age": "years", "systolic_bp": "mmHg", "heart_rate": "bpm", "bmi": "kg/m2",
                         "cholesterol": "mmol/L", "glucose": "mg/dL"}
#: The values a categorical feature may take (anything else is refused).
CATEGORIES: dict[str, tuple[str, ...]] = {"sex": ("F", "M"), "smoking": ("never", "former", "current")}
_TYPES = {c: (String if c in CATEGORIES else Float32) for c in FEATURE_COLUMNS}
_TTL = {"demographics": timedelta(days=3650), "vitals": timedelta(days=365), "labs": timedelta(days=365)}


def _field(column: str) -> Field:
    """A view's field, its plausible range or allowed values in its tags."""
    if column in CATEGORIES:
        tags = {"values": ",".join(CATEGORIES[column])}
    else:
        low, high = RANGES[column]
        tags = {"min": repr(low), "max": repr(high), "unit": UNITS[column]}
    return Field(name=column, dtype=_TYPES[column], tags=tags)


def offline_path(data_dir: Path, view: str) -> Path:
    """The Parquet file holding a view's offline rows."""
    return data_dir / f"{view}.parquet"


def build_definitions(data_dir: Path) -> dict[str, Any]:
    """Every Feast object of the repo, with offline sources under ``data_dir``.

    Returns a name -> object mapping, so the repo's ``definitions.py`` can put the objects
    in its module namespace, where ``feast apply`` finds them.
    """
    tenant = Entity(name="tenant", join_keys=["tenant_id"], value_type=ValueType.STRING,
                    description="A hospital or organisation; patient data never crosses tenants.")
    patient = Entity(name="patient", join_keys=["patient_id"], value_type=ValueType.STRING,
                     description="A patient within a tenant: (tenant_id, patient_id) is the key.")
    objects: dict[str, Any] = {"tenant": tenant, "patient": patient}
    views = {}
    for view, columns in VIEWS.items():
        batch = FileSource(name=f"{view}_source", path=str(offline_path(data_dir, view)),
                           timestamp_field="event_timestamp", created_timestamp_column="created")
        source: Any = batch
        if view != "demographics":
            source = PushSource(name=f"{view}_push", batch_source=batch,
                                description=f"New {view} observations, pushed to the online and offline stores.")
            objects[f"{view}_push"] = source
        views[view] = FeatureView(
            name=view, entities=[tenant, patient], ttl=_TTL[view], online=True, source=source,
            schema=[_field(c) for c in columns],
        )
        objects[f"{view}_source"] = batch
        objects[view] = views[view]

    @on_demand_feature_view(
        sources=[views["vitals"], views["labs"]],
        schema=[Field(name="glucose_mmol_l", dtype=Float64), Field(name="hypertensive", dtype=Float64),
                Field(name="obese", dtype=Float64)],
        mode="python",  # plain lists, no DataFrame per lookup: about 10x cheaper online than pandas mode
        description="Derived: glucose in mmol/L, systolic >= 140 mmHg, BMI >= 30 (unknown when the input is).",
    )
    def derived(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        # self-contained: Feast stores this function's source and runs it on its own
        def known(v: Any) -> bool:
            return v is not None and v == v  # not missing, not NaN

        return {
            "glucose_mmol_l": [float(v) / 18.016 if known(v) else None for v in inputs["glucose"]],
            "hypertensive": [float(float(v) >= 140) if known(v) else None for v in inputs["systolic_bp"]],
            "obese": [float(float(v) >= 30) if known(v) else None for v in inputs["bmi"]],
        }

    objects["derived"] = derived
    return objects
