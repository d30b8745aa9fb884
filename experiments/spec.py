"""The experiment spec: a validated YAML description of one federated training run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from experiments.dp_defaults import dp_defaults
from experiments.errors import SpecError
from experiments.terminology import FhirSpec
from training.categories import canonical
from training.tabular.contract import DataContract
from training.errors import PrivacyConfigError
from training.imaging.data import ImageContract
from training.modality import Modality, get_modality
from training.privacy import DPConfig

__all__ = [
    "AugmentSpec",
    "DataSpec",
    "FhirSpec",
    "IMAGE_MODEL_KINDS",
    "ImageDataSpec",
    "ExperimentSpec",
    "HospitalSpec",
    "ModelSpec",
    "PrivacySpec",
    "RegistrySpec",
    "SelectionSpec",
    "StrategySpec",
    "ThresholdSpec",
    "TrainingSpec",
    "ValidationSpec",
    "load_spec",
    "parse_spec",
]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field of the spec refuses .inf, -.inf and .nan (a
    # privacy budget or target of .inf would switch the guarantee off silently)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HospitalSpec(_Strict):
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


class DataSpec(_Strict):
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
            _unique_hospitals(self.hospitals)
        except ValueError as err:
            problems.append(str(err))
        for column, (low, high) in self.ranges.items():
            if column not in self.numeric:
                problems.append(f"ranges: {column} is not a declared numeric column")
            elif not low < high:
                problems.append(f"ranges: {column} needs min < max, got [{low:g}, {high:g}]")
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
        for column, codes in self.missing_codes.items():
            if column not in self.numeric and column not in self.categorical:
                problems.append(f"missing_codes: {column} is not a declared feature column")
        if self.split_column is None and self.test_fraction + self.val_fraction >= 0.9:
            problems.append(f"test_fraction + val_fraction must be below 0.9 (some patients must train), "
                            f"got {self.test_fraction:g} + {self.val_fraction:g}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def contract(self) -> DataContract:
        """The training layer's view of the columns."""
        return DataContract(
            self.patient_id, self.label, tuple(self.numeric), tuple(self.categorical),
            categories=tuple((c, tuple(values)) for c, values in sorted(self.categories.items())),
            missing_codes=tuple((c, tuple(codes)) for c, codes in sorted(self.missing_codes.items())),
            split_column=self.split_column,
        )


def _unique_hospitals(hospitals: list[HospitalSpec]) -> None:
    ids = [h.id for h in hospitals]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"hospital id listed twice: {sorted(dup)[0]}")


class AugmentSpec(_Strict):
    """Random augmentation of training images (per image, on the training device).

    Flips are off by default: in radiology left and right are not interchangeable.
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = Field(default=10.0, ge=0, le=180, description="max rotation, degrees")
    translate: float = Field(default=0.1, ge=0, le=0.5, description="max shift, fraction of the side")
    brightness: float = Field(default=0.1, ge=0, le=1)
    contrast: float = Field(default=0.1, ge=0, le=1)


ClassName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^,\s][^,]*$")]


class ImageDataSpec(_Strict):
    """The imaging contract: every hospital holds a folder of PNG/JPEG images with a labels
    CSV (image file, patient id, label), or a MedMNIST-layout ``.npz``.

    Attributes:
        classes: The class names, in the order of the model's outputs; CSV labels are these
            names (or their indices), ``.npz`` labels their indices.
        image_size: Every image is resized to this many pixels square.
        channels: 1 (grayscale) or 3 (RGB); images are converted.
        mean, std: Per-channel normalisation of pixel values in [0, 1]; when not given the
            federation computes the pooled mean and standard deviation from the hospitals'
            pixel sums (the statistics round).
        augment: Training augmentation, or null for none.
        metadata: Further ``labels.csv`` columns (e.g. ``sex``, ``age``) carried with each
            image for the validation report's subgroups; folders only (a ``.npz`` has none).
        split_column: A ``labels.csv`` column naming each image's part (train, val, test;
            case-insensitive, validation/valid = val), then required in every folder's
            ``labels.csv``; a ``.npz`` always keeps its train/val/test arrays. Without it,
            folders are split by patient with ``test_fraction`` and ``val_fraction``.
        val_fraction: Share of patients set apart (from the training patients) as the val
            part (model selection, never trained on); 0 = none. Random split only.
    """

    modality: Literal["images"]
    classes: list[ClassName] = Field(min_length=2, max_length=1000)
    image_size: int = Field(default=28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    image_column: str = "image"
    patient_id: str = "patient_id"
    label: str = "label"
    test_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    val_fraction: float = Field(default=0.0, ge=0, lt=0.9)
    split_column: str | None = Field(default=None, min_length=1)
    augment: AugmentSpec | None = AugmentSpec()
    metadata: list[str] = []
    hospitals: list[HospitalSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ImageDataSpec:
        dup = {c for c in self.classes if self.classes.count(c) > 1}
        if dup:
            raise ValueError(f"class listed twice: {sorted(dup)[0]}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then the federation computes them)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel")
        if self.split_column is None and self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError(f"test_fraction + val_fraction must be below 0.9 (some patients must train), "
                             f"got {self.test_fraction:g} + {self.val_fraction:g}")
        columns = [self.image_column, self.patient_id, self.label]
        if len(set(columns)) != 3:
            raise ValueError("image_column, patient_id and label must be different columns")
        named = [*columns, *self.metadata, *([self.split_column] if self.split_column else [])]
        seen = {c for c in named if named.count(c) > 1}
        if seen:
            raise ValueError(f"column declared twice: {sorted(seen)[0]}")
        _unique_hospitals(self.hospitals)
        return self

    @property
    def contract(self) -> ImageContract:
        """The training layer's view of the images."""
        return ImageContract(
            classes=tuple(self.classes), size=self.image_size, channels=self.channels,
            image_column=self.image_column, patient_id=self.patient_id, label=self.label,
            metadata=tuple(self.metadata), split_column=self.split_column,
        )


def _modality(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("modality", "tabular"))
    return str(getattr(value, "modality", "tabular"))


AnyDataSpec = Annotated[
    Annotated[DataSpec, Tag("tabular")] | Annotated[ImageDataSpec, Tag("images")],
    Discriminator(_modality, custom_error_type="modality",
                  custom_error_message="modality must be tabular or images"),
]

#: Model kinds for image data; the others (logistic, mlp) are for tabular data.
IMAGE_MODEL_KINDS = ("cnn", "resnet18")


class ModelSpec(_Strict):
    """Which model to train: ``logistic``/``mlp`` on tabular data, ``cnn``/``resnet18`` on images."""

    kind: Literal["logistic", "mlp", "cnn", "resnet18"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0, le=4096)]] = [64, 32]
    dropout: float = Field(default=0.1, ge=0, lt=1)
    width: int | None = Field(default=None, ge=4, le=256, description="cnn/resnet18: channels of the first stage")


class StrategySpec(_Strict):
    """Server-side aggregation and tolerance to absent hospitals."""

    name: Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    proximal_mu: float = Field(default=0.01, ge=0, description="FedProx")
    server_learning_rate: float = Field(
        default=0.01, gt=0, le=10, description="FedAdam/FedYogi eta; FedAvgM's server step (default: 1 - server_momentum "
                                               "with DP, else 1)")
    server_momentum: float = Field(default=0.9, ge=0, lt=1, description="FedAvgM")
    tau: float = Field(default=1e-3, gt=0, description="FedAdam/FedYogi adaptivity (0.01 by default with DP)")
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
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0, le=1000)]] = Field(
        default="none", description="per-sample loss weight by class: none, balanced (from the federation's class "
                                    "counts) or {class: weight} (tabular: 0/1; images: class names)")

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_keys_as_text(cls, value: Any) -> Any:
        # YAML reads {0: 1, 1: 9} with integer keys; the classes are named as text
        if isinstance(value, dict):
            for k, w in value.items():
                if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w <= 1000:
                    raise ValueError(f"weight of class {k} must be a number in (0, 1000], got {w!r}")
            return {str(k): v for k, v in value.items()}
        if value not in ("none", "balanced"):
            raise ValueError("must be none, balanced or a mapping {class: weight}")
        return value


class PrivacySpec(_Strict):
    """DP-SGD at every hospital; the budget each hospital's ledger allows by default."""

    enabled: bool = True
    target_epsilon: float | None = Field(default=3.0, gt=0)
    target_delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0, description="clipping bound (adaptive clipping: the first bound)")
    clipping: Literal["fixed", "adaptive"] = Field(
        default="fixed", description="adaptive: the bound follows target_quantile of the per-sample gradient norms")
    target_quantile: float = Field(default=0.5, gt=0, lt=1, description="adaptive clipping: share of gradients unclipped")
    clip_learning_rate: float = Field(default=0.2, gt=0, le=1, description="adaptive clipping: geometric step per DP step")
    grad_sample_mode: Literal["fused", "hooks", "ghost", "functorch"] = "fused"
    accountant: Literal["rdp", "prv"] = "rdp"
    hospital_budget: float = Field(default=10.0, gt=0, description="default total epsilon per hospital")
    statistics_epsilon: float = Field(default=1.0, gt=0, le=10,
                                      description="epsilon of the federated-statistics round (charged to the ledger)")
    selection_epsilon: float = Field(default=1.0, gt=0, le=10,
                                     description="epsilon of all training.rounds rounds' val releases for model "
                                                 "selection together (RDP composition; charged to the ledger)")

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
            clipping=self.clipping,
            target_quantile=self.target_quantile,
            clip_learning_rate=self.clip_learning_rate,
        )


class ThresholdSpec(_Strict):
    """How the served decision threshold is chosen (binary models), on the federated val part.

    Attributes:
        rule: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity`` (the
            highest threshold reaching ``target``) or ``fixed`` (``value``). Without a val
            part, or with more than two classes, the prior-corrected argmax is served instead
            (docs/imbalance.md).
        target: The sensitivity to reach (rule ``sensitivity``).
        value: The threshold (rule ``fixed``).
    """

    rule: Literal["youden", "sensitivity", "fixed"] = "youden"
    target: float | None = Field(default=None, gt=0, le=1)
    value: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _arguments(self) -> ThresholdSpec:
        if self.rule == "sensitivity" and self.target is None:
            raise ValueError("rule sensitivity needs a target (e.g. 0.8)")
        if self.rule == "fixed" and self.value is None:
            raise ValueError("rule fixed needs a value in (0, 1)")
        if self.target is not None and self.rule != "sensitivity":
            raise ValueError(f"target is for rule sensitivity, not {self.rule}")
        if self.value is not None and self.rule != "fixed":
            raise ValueError(f"value is for rule fixed, not {self.rule}")
        return self


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
        threshold: How the served decision threshold is chosen (:class:`ThresholdSpec`).
    """

    thresholds: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default=[0.1, 0.2, 0.3], min_length=1, max_length=20)
    subgroups: list[str] | None = None
    min_cell: int = Field(default=10, ge=1, le=1000)
    threshold: ThresholdSpec = ThresholdSpec()

    def subgroup_columns(self, data: DataSpec | ImageDataSpec) -> list[str]:
        """The columns the report is broken down by (besides hospital); for images, among
        the declared ``data.metadata`` columns."""
        if isinstance(data, ImageDataSpec):
            if self.subgroups is None:
                return [c for c in ("sex", "age") if c in data.metadata]
            return list(self.subgroups)
        if self.subgroups is None:
            return [c for c in ("sex", "age") if c in data.numeric or c in data.categorical]
        return list(self.subgroups)


class SelectionSpec(_Strict):
    """Which round's model is registered, chosen on the hospitals' val parts, and early stopping.

    Attributes:
        metric: ``loss`` (mean cross-entropy, clipped per row), ``auroc`` (binary; macro
            one-vs-rest for images) or ``balanced_accuracy`` (argmax / risk >= 0.5).
        patience: Rounds in a row without improvement before training stops; None runs
            every round.
        min_rounds: Rounds that always run before early stopping may stop training.
        min_delta: The smallest change of the metric that counts as an improvement.
    """

    metric: Literal["loss", "auroc", "balanced_accuracy"] = "loss"
    patience: int | None = Field(default=None, ge=1, le=1000)
    min_rounds: int = Field(default=1, ge=1, le=1000)
    min_delta: float = Field(default=0.0, ge=0)


class RegistrySpec(_Strict):
    """What registration does with the new version.

    Attributes:
        candidate_despite_warning: Give the ``candidate`` alias to a version whose federated
            validation found it no better than the trivial model (the version is registered
            with its ``validation.quality_warning`` tag either way).
    """

    candidate_despite_warning: bool = False


def _check(fn: Any) -> Any:
    """Mark an :class:`ExperimentSpec` consistency check: every marked check runs, and the
    spec's error lists all their problems (not only the first)."""
    fn.__spec_check__ = True
    return fn


class ExperimentSpec(_Strict):
    """One federated experiment, as a data scientist writes it in YAML."""

    name: Name
    registered_model: Name | None = None
    description: str = ""
    seed: int = 0
    data: AnyDataSpec
    model: ModelSpec = ModelSpec()
    strategy: StrategySpec = StrategySpec()
    training: TrainingSpec = TrainingSpec()
    privacy: PrivacySpec = PrivacySpec()
    validation: ValidationSpec = ValidationSpec()
    selection: SelectionSpec = SelectionSpec()
    registry: RegistrySpec = RegistrySpec()
    fhir: FhirSpec = FhirSpec()
    #: The DP defaults this spec was given (``section.field`` -> value): fields it left out
    #: and :func:`experiments.dp_defaults.dp_defaults` chose (docs/dp-training.md).
    _defaulted: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def defaulted(self) -> dict[str, Any]:
        """The DP defaults applied to fields this spec left out (``section.field`` -> value)."""
        return dict(self._defaulted)

    @property
    def model_name(self) -> str:
        """Registered model name in the MLflow registry."""
        return self.registered_model or self.name

    @property
    def has_val_part(self) -> bool:
        """Whether the spec gives hospitals a val part (``data.val_fraction`` or a split
        column); a split column's file may still have no val rows, and an image ``.npz``
        may have one without either."""
        return bool(getattr(self.data, "val_fraction", 0.0)) or getattr(self.data, "split_column", None) is not None

    @property
    def modality(self) -> Modality:
        """The registered :class:`training.modality.Modality` of the spec's ``data.modality``."""
        return get_modality(self.data.modality)

    @property
    def is_imaging(self) -> bool:
        """True for an image classifier (``data.modality: images``)."""
        return isinstance(self.data, ImageDataSpec)

    @_check
    def _model_fits_data(self) -> ExperimentSpec:
        kind_set = "kind" in self.model.model_fields_set
        if self.is_imaging:
            if not kind_set:
                object.__setattr__(self, "model", self.model.model_copy(update={"kind": "cnn"}))
            elif self.model.kind not in IMAGE_MODEL_KINDS:
                raise ValueError(f"model.kind: {self.model.kind} is for tabular data; images take cnn or resnet18")
            privacy = self.privacy
            if privacy.enabled and privacy.grad_sample_mode == "fused":
                if "grad_sample_mode" in privacy.model_fields_set:
                    raise ValueError("privacy.grad_sample_mode: fused is for Linear-only models; images take hooks, ghost or functorch")
                object.__setattr__(self, "privacy", privacy.model_copy(update={"grad_sample_mode": "hooks"}))
            assert isinstance(self.data, ImageDataSpec)
            for column in self.validation.subgroups or []:
                if column not in self.data.metadata:
                    raise ValueError(f"validation.subgroups: {column} is not a declared data.metadata column")
        elif kind_set and self.model.kind in IMAGE_MODEL_KINDS:
            raise ValueError(f"model.kind: {self.model.kind} is for images; set data.modality: images or use logistic or mlp")
        return self

    @_check
    def _dp_defaults(self) -> ExperimentSpec:
        """Give the fields a DP run's spec left out their DP-safe values; set fields win."""
        explicit = {f"{section}.{name}" for section in ("training", "privacy", "strategy")
                    for name in getattr(self, section).model_fields_set}
        rules = dp_defaults(private=self.privacy.enabled, imaging=self.is_imaging, strategy=self.strategy.name,
                            server_momentum=self.strategy.server_momentum, explicit=explicit,
                            optimizer=self.training.optimizer)
        applied: dict[str, Any] = {}
        for section, values in rules.items():
            current = getattr(self, section)
            update = {k: v for k, v in values.items() if k not in current.model_fields_set and getattr(current, k) != v}
            if update:
                object.__setattr__(self, section, current.model_copy(update=update))
                applied.update({f"{section}.{k}": v for k, v in update.items()})
        self._defaulted = applied
        return self

    @_check
    def _subgroups_are_features(self) -> ExperimentSpec:
        if self.is_imaging:
            return self
        for column in self.validation.subgroups or []:
            if column not in self.data.numeric and column not in self.data.categorical:
                raise ValueError(f"validation.subgroups: {column} is not a declared feature column")
        return self

    @_check
    def _ranges_for_dp_statistics(self) -> ExperimentSpec:
        if isinstance(self.data, DataSpec) and self.privacy.enabled:
            missing = [c for c in self.data.numeric if c not in self.data.ranges]
            if missing:
                raise ValueError(f"data.ranges: declare [min, max] for numeric column {missing[0]} "
                                 "(the DP statistics round clips each value to it)")
        return self

    @_check
    def _class_weights_name_classes(self) -> ExperimentSpec:
        weights = self.training.class_weights
        if isinstance(weights, dict):
            classes = self.data.classes if isinstance(self.data, ImageDataSpec) else ["0", "1"]
            unknown = [c for c in weights if c not in classes]
            if unknown:
                raise ValueError(f"training.class_weights: {unknown[0]} is not a class (classes: {', '.join(classes)})")
        return self

    @_check
    def _fhir_codes_name_features(self) -> ExperimentSpec:
        columns = set() if self.is_imaging else {*self.data.numeric, *self.data.categorical}
        for column, coding in self.fhir.features.items():
            if column not in columns:
                raise ValueError(f"fhir.features: {column} is not a declared feature column")
            if coding.values and column not in self.data.categorical:
                raise ValueError(f"fhir.features.{column}.values: {column} is numeric; value codes are for categories")
        return self

    @_check
    def _selection_fits_training(self) -> ExperimentSpec:
        selection, rounds = self.selection, self.training.rounds
        if selection.min_rounds > rounds:
            raise ValueError(f"selection.min_rounds: {selection.min_rounds} is more than training.rounds ({rounds})")
        # images: a .npz file's val_* arrays are a val part the spec cannot see
        if selection.patience is not None and not self.is_imaging and not self.has_val_part:
            raise ValueError("selection.patience: early stopping needs a val part: set data.val_fraction or data.split_column")
        return self

    @_check
    def _enough_hospitals(self) -> ExperimentSpec:
        if self.strategy.min_hospitals > len(self.data.hospitals):
            raise ValueError(
                f"strategy.min_hospitals is {self.strategy.min_hospitals} but only "
                f"{len(self.data.hospitals)} hospitals are listed"
            )
        return self

    @model_validator(mode="after")
    def _every_check(self) -> ExperimentSpec:
        """Run every ``@_check`` in order and report all their problems at once."""
        problems = []
        for check in [v for v in type(self).__dict__.values() if getattr(v, "__spec_check__", False)]:
            try:
                check(self)
            except ValueError as err:
                problems += [line for line in str(err).splitlines() if line]
        if problems:
            raise ValueError("\n".join(problems))
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


def _describe(err: ValidationError) -> list[str]:
    """Every problem of a failed validation, one line each: ``field.path: problem``."""
    parts = []
    for e in err.errors():
        # the data section's union tags (tabular, images) are not fields the user wrote
        path = [p for i, p in enumerate(e["loc"]) if not (i == 1 and e["loc"][0] == "data" and p in ("tabular", "images"))]
        loc = ".".join(str(p) for p in path) or "spec"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts += [f"{loc}: {line}" if loc != "spec" else line for line in msg.splitlines() if line.strip()]
    return parts


def parse_spec(data: object, source: str = "spec") -> ExperimentSpec:
    """Validate a mapping (parsed YAML or JSON) as a spec.

    Raises:
        SpecError: one line per problem, each naming the source and the field at fault.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields at the top level")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("\n".join(f"{source}: {problem}" for problem in _describe(err))) from err


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
