"""The experiment spec: a validated YAML description of one federated training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experiments.errors import SpecError
from training.contract import DataContract
from training.errors import PrivacyConfigError
from training.privacy import DPConfig

__all__ = [
    "DataSpec",
    "ExperimentSpec",
    "HospitalSpec",
    "ModelSpec",
    "PrivacySpec",
    "StrategySpec",
    "TrainingSpec",
    "ValidationSpec",
    "load_spec",
    "parse_spec",
]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HospitalSpec(_Strict):
    """A hospital taking part: its id and, for simulation, its data file."""

    id: Name
    path: Path | None = None
    privacy_budget: float | None = Field(default=None, gt=0, description="total epsilon this hospital allows")


class DataSpec(_Strict):
    """The data contract every hospital's file must meet, and the hospitals."""

    patient_id: str = "patient_id"
    label: str
    numeric: list[str] = []
    categorical: list[str] = []
    test_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    hospitals: list[HospitalSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _columns(self) -> DataSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("declare at least one numeric or categorical feature")
        columns = [self.patient_id, self.label, *self.numeric, *self.categorical]
        seen = {c for c in columns if columns.count(c) > 1}
        if seen:
            raise ValueError(f"column declared twice: {sorted(seen)[0]}")
        ids = [h.id for h in self.hospitals]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"hospital id listed twice: {sorted(dup)[0]}")
        return self

    @property
    def contract(self) -> DataContract:
        """The training layer's view of the columns."""
        return DataContract(self.patient_id, self.label, tuple(self.numeric), tuple(self.categorical))


class ModelSpec(_Strict):
    """Which risk model to train."""

    kind: Literal["logistic", "mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = [64, 32]
    dropout: float = Field(default=0.1, ge=0, lt=1)


class StrategySpec(_Strict):
    """Server-side aggregation and tolerance to absent hospitals."""

    name: Literal["fedavg", "fedprox", "fedadam", "fedyogi"] = "fedavg"
    proximal_mu: float = Field(default=0.01, ge=0, description="FedProx")
    server_learning_rate: float = Field(default=0.01, gt=0, description="FedAdam/FedYogi eta")
    tau: float = Field(default=1e-3, gt=0, description="FedAdam/FedYogi adaptivity")
    min_hospitals: int = Field(default=2, ge=1, description="a round fails with fewer answers")
    round_timeout: float = Field(default=600, gt=0, description="seconds to wait for a round's replies")
    join_timeout: float = Field(default=120, gt=0, description="seconds to wait for all hospitals to connect")


class TrainingSpec(_Strict):
    """Rounds and local optimisation."""

    rounds: int = Field(default=5, ge=1, le=1000)
    local_epochs: int = Field(default=1, ge=1, le=100)
    batch_size: int = Field(default=64, ge=1, le=65536)
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    optimizer: Literal["adam", "sgd"] = "adam"


class PrivacySpec(_Strict):
    """DP-SGD at every hospital; the budget each hospital's ledger allows by default."""

    enabled: bool = True
    target_epsilon: float | None = Field(default=3.0, gt=0)
    target_delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    grad_sample_mode: Literal["fused", "hooks", "ghost", "functorch"] = "fused"
    accountant: Literal["rdp", "prv"] = "rdp"
    hospital_budget: float = Field(default=10.0, gt=0, description="default total epsilon per hospital")

    @model_validator(mode="after")
    def _one_target(self) -> PrivacySpec:
        if self.noise_multiplier is not None and "target_epsilon" not in self.model_fields_set:
            object.__setattr__(self, "target_epsilon", None)
        try:
            self.dp_config
        except PrivacyConfigError as err:
            raise ValueError(str(err)) from err
        return self

    @property
    def dp_config(self) -> DPConfig:
        """The training layer's DP settings."""
        return DPConfig(
            enabled=self.enabled,
            target_epsilon=self.target_epsilon,
            target_delta=self.target_delta,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            grad_sample_mode=self.grad_sample_mode,
            accountant=self.accountant,
        )


class ValidationSpec(_Strict):
    """The clinical validation report computed when a version is registered.

    Attributes:
        thresholds: Risk thresholds at which sensitivity, specificity, PPV, NPV and net
            benefit are reported (the decision thresholds the clinic considers).
        subgroups: Feature columns to break the report down by (besides hospital): a
            categorical column gives one cell per value, a numeric one (age) age bands.
            Default: ``sex`` and ``age`` where the data declares them.
        min_cell: A hospital reports no subgroup cell with fewer patients (small-cell
            protection); its overall cell is always reported.
    """

    thresholds: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default=[0.1, 0.2, 0.3], min_length=1, max_length=20)
    subgroups: list[str] | None = None
    min_cell: int = Field(default=10, ge=1, le=1000)

    def subgroup_columns(self, data: DataSpec) -> list[str]:
        """The columns the report is broken down by."""
        if self.subgroups is None:
            return [c for c in ("sex", "age") if c in data.numeric or c in data.categorical]
        return list(self.subgroups)


class ExperimentSpec(_Strict):
    """One federated experiment, as a data scientist writes it in YAML."""

    name: Name
    registered_model: Name | None = None
    description: str = ""
    seed: int = 0
    data: DataSpec
    model: ModelSpec = ModelSpec()
    strategy: StrategySpec = StrategySpec()
    training: TrainingSpec = TrainingSpec()
    privacy: PrivacySpec = PrivacySpec()
    validation: ValidationSpec = ValidationSpec()

    @property
    def model_name(self) -> str:
        """Registered model name in the MLflow registry."""
        return self.registered_model or self.name

    @model_validator(mode="after")
    def _subgroups_are_features(self) -> ExperimentSpec:
        for column in self.validation.subgroups or []:
            if column not in self.data.numeric and column not in self.data.categorical:
                raise ValueError(f"validation.subgroups: {column} is not a declared feature column")
        return self

    @model_validator(mode="after")
    def _enough_hospitals(self) -> ExperimentSpec:
        if self.strategy.min_hospitals > len(self.data.hospitals):
            raise ValueError(
                f"strategy.min_hospitals is {self.strategy.min_hospitals} but only "
                f"{len(self.data.hospitals)} hospitals are listed"
            )
        return self

    def resolve_paths(self, base: Path) -> ExperimentSpec:
        """Return a copy whose relative hospital paths are made absolute against ``base``."""
        hospitals = [
            h.model_copy(update={"path": (base / h.path).resolve() if h.path and not h.path.is_absolute() else h.path})
            for h in self.data.hospitals
        ]
        return self.model_copy(update={"data": self.data.model_copy(update={"hospitals": hospitals})})

    def hospital(self, hospital_id: str) -> HospitalSpec | None:
        """The listed hospital with that id, if any."""
        return next((h for h in self.data.hospitals if h.id == hospital_id), None)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "spec"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    more = f" (and {len(parts) - 1} more problems)" if len(parts) > 1 else ""
    return parts[0] + more


def parse_spec(data: object, source: str = "spec") -> ExperimentSpec:
    """Validate a mapping (parsed YAML or JSON) as a spec.

    Raises:
        SpecError: naming the source and the first field at fault.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields at the top level")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {_describe(err)}") from err


def load_spec(path: Path | str) -> ExperimentSpec:
    """Read and validate a YAML spec; hospital paths are resolved against its folder.

    Raises:
        SpecError: the file is missing, not YAML, or invalid, with the field at fault.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"{path}: cannot read spec ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}") from err
    return parse_spec(data, str(path)).resolve_paths(path.parent.resolve())
