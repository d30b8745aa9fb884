"""The spec's ``data:`` section as every modality shapes it: the shared fields and what the spec asks of it."""

from __future__ import annotations

import math
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from training.categories import canonical

__all__ = ["CategoryValue", "DataSection", "HospitalSpec", "Name", "StrictSection", "unique_hospitals"]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class StrictSection(BaseModel):
    """A spec section: unknown fields refused, frozen, no infinite or NaN floats."""

    # allow_inf_nan=False: every float field of the spec refuses .inf, -.inf and .nan (a
    # privacy budget or target of .inf would switch the guarantee off silently)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HospitalSpec(StrictSection):
    """A hospital taking part: its id and, for simulation, its data file."""

    id: Name
    path: Path | None = None
    privacy_budget: float | None = Field(default=None, gt=0, description="total epsilon this hospital allows")


def _category_text(value: Any) -> str:
    """A declared category or missing code as text: numbers as YAML gives them (1, 4.0)
    become their canonical spelling; non-finite numbers and empty text are refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number or text")
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError("must be a number or text")
    text = canonical(value)
    if text is None:
        raise ValueError("must not be empty")
    return text


CategoryValue = Annotated[str, BeforeValidator(_category_text)]


def unique_hospitals(hospitals: list[HospitalSpec]) -> None:
    """Refuse a hospital id listed twice.

    Raises:
        ValueError: naming the first id listed twice (pydantic reports it on the field).
    """
    ids = [h.id for h in hospitals]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"hospital id listed twice: {sorted(dup)[0]}")


class DataSection(StrictSection):
    """The fields every modality's data section has, and what the experiment spec asks of it.

    Each modality's subclass declares its fields, in the order its YAML reads: at least
    ``modality`` (a ``Literal`` of its registered name), ``patient_id``, ``label``,
    ``test_fraction``, ``val_fraction``, ``split_column`` and ``hospitals``.

    The models this data takes are the modality's ``model:`` section
    (:class:`training.model_section.ModelSection`).

    Attributes:
        dp_defaults: DP-safe values per spec section for fields a DP run leaves out.
        subgroup_source: What ``validation.subgroups`` columns must be (in error messages).
    """

    if TYPE_CHECKING:  # declared by each subclass, in its own field order
        modality: str
        patient_id: str
        label: str
        test_fraction: float
        val_fraction: float
        split_column: str | None
        hospitals: list[HospitalSpec]

    dp_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    subgroup_source: ClassVar[str] = "feature column"

    @abstractmethod
    def class_names(self) -> list[str]:
        """The model's classes in output order."""

    def subgroup_candidates(self) -> list[str]:
        """The columns ``validation.subgroups`` may name."""
        return []

    def feature_columns(self) -> list[str]:
        """The model's input columns (``fhir.features`` may code them)."""
        return []

    def categorical_columns(self) -> list[str]:
        """The categorical input columns (``fhir.features`` may code their values)."""
        return []

    def may_have_val_part(self) -> bool:
        """Whether hospitals may hold a val part (``data.val_fraction`` or a split column)."""
        return bool(self.val_fraction) or self.split_column is not None

    def problems(self, *, private: bool) -> list[str]:
        """This data's own checks against the rest of the spec (``private``: DP is on)."""
        return []
