"""Feature contracts (issue 10 item 14) and observation times (item 13), without services."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from feature_store.contract import check_category, check_number, check_observation, check_observed_at, violations
from feature_store.definitions import CATEGORIES, FEATURE_COLUMNS, RANGES
from feature_store.errors import FeatureValueError
from platform_api.schemas import ObservationCreate


def test_every_feature_declares_a_finite_range_or_its_categories() -> None:
    assert set(RANGES) | set(CATEGORIES) == set(FEATURE_COLUMNS) and not set(RANGES) & set(CATEGORIES)
    for low, high in RANGES.values():
        assert math.isfinite(low) and math.isfinite(high) and 0 <= low < high
    assert RANGES["age"] == (0.0, 130.0) and CATEGORIES["sex"] == ("F", "M")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -500, 1e308, 10**400, "120", True, None, [120]])
def test_check_number_refuses_naming_the_feature(value: Any) -> None:
    with pytest.raises(FeatureValueError) as info:
        check_number("systolic_bp", value)
    assert info.value.feature == "systolic_bp" and str(info.value).startswith("systolic_bp: ")


def test_bounds_are_inclusive_and_ints_are_numbers() -> None:
    assert check_number("age", 0) == 0.0 and check_number("age", 130) == 130.0
    assert check_observation({"glucose": 10, "heart_rate": 300.0}) == {"glucose": 10.0, "heart_rate": 300.0}
    with pytest.raises(FeatureValueError, match="outside the plausible range 0 to 130 years"):
        check_number("age", 130.5)


def test_categories_take_only_declared_values() -> None:
    assert check_category("smoking", "former") == "former"
    for bad in ("vape", "m", 1, None):
        with pytest.raises(FeatureValueError, match="^smoking: "):
            check_category("smoking", bad)


def test_violations_of_stored_values_ignore_unknown_and_derived() -> None:
    stored = {"age": 50.0, "systolic_bp": math.inf, "bmi": None, "sex": "X", "glucose_mmol_l": 1e9, "heart_rate": -1.0}
    assert set(violations(stored)) == {"systolic_bp", "sex", "heart_rate"}
    assert violations({"age": 50.0, "sex": "F", "bmi": None}) == {}


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "-500", "1e308", "1e400", '"120"', "true", '{"v": 1}'])
def test_observation_schema_refuses_bad_values(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        ObservationCreate.model_validate(json.loads('{"values": {"systolic_bp": ' + raw + "}}"))
    assert "systolic_bp" in str(info.value)


def test_observation_schema_is_the_contract() -> None:
    """The OpenAPI schema states each observable feature's range: what is documented is what is taken."""
    schema = ObservationCreate.model_json_schema()
    properties = schema["$defs"]["ObservedValues"]["properties"]
    assert set(properties) == {"systolic_bp", "heart_rate", "bmi", "cholesterol", "glucose"}
    for name, spec in properties.items():
        assert spec["type"] == "number" and "default" not in spec
        assert (spec["minimum"], spec["maximum"]) == RANGES[name]
    assert schema["$defs"]["ObservedValues"]["additionalProperties"] is False
    with pytest.raises(ValidationError) as info:
        ObservationCreate.model_validate({"values": {"age": 50.0}})
    assert info.value.errors()[0]["loc"] == ("values", "age")
    assert schema["$defs"]["ObservedValues"]["minProperties"] == 1
    with pytest.raises(ValidationError, match="at least one value"):
        ObservationCreate.model_validate({"values": {}})


def test_observation_times_need_a_zone_are_utc_and_not_in_the_future() -> None:
    with pytest.raises(ValidationError) as info:
        ObservationCreate.model_validate_json('{"values": {"bmi": 22}, "observed_at": "2026-01-10T10:00:00"}')
    assert info.value.errors()[0]["loc"] == ("observed_at",)
    aware = ObservationCreate.model_validate_json('{"values": {"bmi": 22}, "observed_at": "2026-01-10T12:00:00+02:00"}')
    assert aware.observed_at == datetime(2026, 1, 10, 10, 0, tzinfo=UTC) and aware.observed_at.utcoffset() == timedelta(0)
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert check_observed_at(None, now=now) == now
    assert check_observed_at(now + timedelta(minutes=4), now=now) == now + timedelta(minutes=4)  # clock skew
    for bad in (now + timedelta(minutes=6), datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 10, 11, 0)):
        with pytest.raises(FeatureValueError, match="^observed_at: "):
            check_observed_at(bad, now=now)
    # an offline batch may be dated ahead (it becomes current at its time); naive or ancient still not
    assert check_observed_at(now + timedelta(days=1), now=now, allow_future=True) == now + timedelta(days=1)
    for bad in (datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 10, 11, 0)):
        with pytest.raises(FeatureValueError, match="^observed_at: "):
            check_observed_at(bad, now=now, allow_future=True)
