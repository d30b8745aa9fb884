"""The tabular ``data:`` and ``model:`` sections of an experiment spec (``data.modality: tabular``, the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from training.categories import canonical
from training.data_section import CategoryValue, DataSection, HospitalSpec, unique_hospitals
from training.model_section import ModelSection

if TYPE_CHECKING:
    from training.tabular.contract import DataContract

__all__ = ["DataSpec", "TabularModelSpec"]


class DataSpec(DataSection):
    """The data contract every hospital's file must meet, and the hospitals (tabular data).

    Attributes:
        categories: Allowed values per categorical column (canonicalised, docs/data.md);
            a value outside the list is reported per ``unknown_categories`` and encoded as
            ``__other``.
        unknown_categories: ``warn`` (default) or ``refuse`` a hospital whose categorical
            values are outside the declared list or seen at no other hospital.
        missing_codes: Per feature column, values that mean missing (cholesterol ``0``),
            applied at load before anything else.
        split_column: A column naming each row's part (train, val, test; case-insensitive,
            validation/valid = val); then ``test_fraction`` and ``val_fraction`` are unused.
        val_fraction: Share of the training rows set apart as the val part, without a split
            column (0 = none).
    """

    modality: Literal["tabular"] = "tabular"
    patient_id: str = "patient_id"
    label: str
    numeric: list[str] = []
    categorical: list[str] = []
    test_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    val_fraction: float = Field(default=0.0, ge=0, lt=0.9)
    split_column: str | None = Field(default=None, min_length=1)
    ranges: dict[str, tuple[float, float]] = Field(
        default={}, description="[min, max] per numeric column: values are clipped to it before the DP statistics round")
    categories: dict[str, list[CategoryValue]] = {}
    unknown_categories: Literal["warn", "refuse"] = "warn"
    missing_codes: dict[str, list[CategoryValue]] = {}
    hospitals: list[HospitalSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _columns(self) -> DataSpec:
        problems = []
        if not self.numeric and not self.categorical:
            problems.append("declare at least one numeric or categorical feature")
        columns = [self.patient_id, self.label, *self.numeric, *self.categorical,
                   *([self.split_column] if self.split_column else [])]
        seen = {c for c in columns if columns.count(c) > 1}
        if seen:
            problems.append(f"column declared twice: {sorted(seen)[0]}")
        try:
            unique_hospitals(self.hospitals)
        except ValueError as err:
            problems.append(str(err))
        problems += self._range_problems() + self._category_problems()
        for column in self.missing_codes:
            if column not in self.numeric and column not in self.categorical:
                problems.append(f"missing_codes: {column} is not a declared feature column")
        if self.split_column is None and self.test_fraction + self.val_fraction >= 0.9:
            problems.append(f"test_fraction + val_fraction must be below 0.9 (some patients must train), "
                            f"got {self.test_fraction:g} + {self.val_fraction:g}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _range_problems(self) -> list[str]:
        problems = []
        for column, (low, high) in self.ranges.items():
            if column not in self.numeric:
                problems.append(f"ranges: {column} is not a declared numeric column")
            elif not low < high:
                problems.append(f"ranges: {column} needs min < max, got [{low:g}, {high:g}]")
        return problems

    def _category_problems(self) -> list[str]:
        problems = []
        for column, values in self.categories.items():
            if column not in self.categorical:
                problems.append(f"categories: {column} is not a declared categorical column")
            elif not values:
                problems.append(f"categories: {column} needs at least one value")
            else:
                spelled = [str(canonical(v)).casefold() for v in values]
                twice = sorted({v for v in spelled if spelled.count(v) > 1})
                if twice:
                    problems.append(f"categories: {column} lists {twice[0]!r} twice (after canonicalisation)")
        return problems

    @property
    def contract(self) -> DataContract:
        """The training layer's view of the columns."""
        from training.tabular.contract import DataContract

        return DataContract(
            self.patient_id, self.label, tuple(self.numeric), tuple(self.categorical),
            categories=tuple((c, tuple(values)) for c, values in sorted(self.categories.items())),
            missing_codes=tuple((c, tuple(codes)) for c, codes in sorted(self.missing_codes.items())),
            split_column=self.split_column,
        )

    def class_names(self) -> list[str]:
        """A risk model's two classes, ``0`` and ``1``."""
        return ["0", "1"]

    def subgroup_candidates(self) -> list[str]:
        """The feature columns."""
        return self.feature_columns()

    def feature_columns(self) -> list[str]:
        """The numeric, then the categorical columns."""
        return [*self.numeric, *self.categorical]

    def categorical_columns(self) -> list[str]:
        """The categorical columns."""
        return list(self.categorical)

    def problems(self, *, private: bool) -> list[str]:
        """With DP, every numeric column needs its ``ranges`` (the DP statistics round clips to them)."""
        missing = [c for c in self.numeric if c not in self.ranges] if private else []
        if missing:
            return [f"data.ranges: declare [min, max] for numeric column {missing[0]} "
                    "(the DP statistics round clips each value to it)"]
        return []


class TabularModelSpec(ModelSection):
    """The ``model:`` section for tabular data: logistic regression or an MLP.

    Attributes:
        hidden: The MLP's hidden layer widths (unused by ``logistic``).
        dropout: The MLP's dropout (unused by ``logistic``).
    """

    kind: str = Field(default="mlp", min_length=1, max_length=64)
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = [64, 32]
    dropout: float = Field(default=0.1, ge=0, lt=1)

    kinds: ClassVar[tuple[str, ...]] = ("logistic", "mlp")
    #: ``fused``: BioVerse's one-pass DP-SGD for Linear-only models (training/tabular/fused_dp.py).
    grad_sample_modes: ClassVar[tuple[str, ...]] = ("fused", "hooks", "ghost", "functorch")

    @classmethod
    def kind_problem(cls, kind: str, modality: str) -> str:
        """An image model on tabular data."""
        if kind in ("cnn", "resnet18"):
            return f"{kind} is for images; set data.modality: images or use logistic or mlp"
        return super().kind_problem(kind, modality)

    def hparams(self) -> dict[str, Any]:
        """An MLP's hidden layers and dropout (nothing for ``logistic``)."""
        return {"hidden": tuple(self.hidden), "dropout": self.dropout} if self.kind == "mlp" else {}
