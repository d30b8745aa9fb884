"""The experiment spec: a validated YAML description of one federated training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from experiments.dp_defaults import dp_defaults
from experiments.errors import SpecError
from experiments.spec_sections import (
    PrivacySpec,
    RegistrySpec,
    SelectionSpec,
    StrategySpec,
    TrainingSpec,
    ValidationSpec,
)
from experiments.terminology import FhirSpec
from training.data_section import DataSection, HospitalSpec, Name, StrictSection
from training.errors import UnknownModalityError
from training.modality import REGISTRY, Modality, get_modality
from training.model_section import ModelSection, one_of

__all__ = ["ExperimentSpec", "load_spec", "parse_spec"]


def _modality_name(data: Any) -> str:
    """The modality a raw ``data:`` section names (default ``tabular``)."""
    return str(data.get("modality", "tabular") if isinstance(data, dict) else getattr(data, "modality", "tabular"))


def _data_section(value: Any, handler: ValidatorFunctionWrapHandler) -> DataSection:
    """Validate ``data:`` as its modality's section (``data.modality``, default ``tabular``),
    looked up in the modality registry."""
    name = _modality_name(value)
    try:
        section = get_modality(str(name)).data_spec
    except UnknownModalityError as err:
        raise PydanticCustomError("modality", "modality must be {known}", {"known": " or ".join(REGISTRY)}) from err
    return section.model_validate(value)


AnyDataSpec = Annotated[SerializeAsAny[DataSection], WrapValidator(_data_section)]


@dataclass(frozen=True)
class _ModelInput:
    """The raw ``model:`` section with the modality the raw ``data:`` names (``ExperimentSpec`` pairs them)."""

    modality: str
    value: Any


def registered(member: str) -> list[str]:
    """Every registered modality's model-section ``member`` (``kinds``, ``grad_sample_modes``), in registry order."""
    found: list[str] = []
    for name in REGISTRY:
        found += [v for v in getattr(get_modality(name).model_spec, member) if v not in found]
    return found


def _model_section(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate ``model:`` as the section of the modality ``data.modality`` names; with an
    unknown modality (``data:``'s error) the model is left unchecked."""
    name, value = (value.modality, value.value) if isinstance(value, _ModelInput) else ("tabular", value)
    try:
        section = get_modality(name).model_spec
    except UnknownModalityError:
        return value
    return section.model_validate(value, context={"modality": name, "model_kinds": registered("kinds")})


AnyModelSpec = Annotated[SerializeAsAny[ModelSection], WrapValidator(_model_section)]


def _check(fn: Any) -> Any:
    """Mark an :class:`ExperimentSpec` consistency check: every marked check runs, and the
    spec's error lists all their problems (not only the first)."""
    fn.__spec_check__ = True
    return fn


class ExperimentSpec(StrictSection):
    """One federated experiment, as a data scientist writes it in YAML."""

    name: Name
    registered_model: Name | None = None
    description: str = ""
    seed: int = 0
    data: AnyDataSpec
    #: The modality's model section (``data.modality``'s ``Modality.model_spec``).
    model: AnyModelSpec
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
    def modality(self) -> Modality:
        """The registered :class:`training.modality.Modality` of the spec's ``data.modality``."""
        return get_modality(self.data.modality)

    @model_validator(mode="before")
    @classmethod
    def _model_of_the_data(cls, values: Any) -> Any:
        """Pair ``model:`` with the modality ``data:`` names: the model section is that modality's."""
        if isinstance(values, dict):
            values = {**values, "model": _ModelInput(_modality_name(values.get("data")), values.get("model", {}))}
        return values

    @_check
    def _privacy_fits_the_model(self) -> ExperimentSpec:
        privacy, modes = self.privacy, self.model.grad_sample_modes
        mode = privacy.grad_sample_mode
        if mode is None:  # the model section's default
            object.__setattr__(self, "privacy", privacy.model_copy(update={"grad_sample_mode": modes[0]}))
        elif mode not in modes:
            if mode not in (known := registered("grad_sample_modes")):
                raise ValueError(f"privacy.grad_sample_mode: Input should be {one_of(known)}")
            if privacy.enabled:
                raise ValueError(f"privacy.grad_sample_mode: {self.model.grad_sample_mode_problem(mode, self.data.modality)}")
        return self

    @_check
    def _dp_defaults(self) -> ExperimentSpec:
        """Give the fields a DP run's spec left out their DP-safe values; set fields win."""
        explicit = {f"{section}.{name}" for section in ("training", "privacy", "strategy")
                    for name in getattr(self, section).model_fields_set}
        rules = dp_defaults(private=self.privacy.enabled, modality_defaults=self.data.dp_defaults,
                            strategy=self.strategy.name, server_momentum=self.strategy.server_momentum,
                            explicit=explicit, optimizer=self.training.optimizer)
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
    def _subgroups_are_declared(self) -> ExperimentSpec:
        candidates = self.data.subgroup_candidates()
        for column in self.validation.subgroups or []:
            if column not in candidates:
                raise ValueError(f"validation.subgroups: {column} is not a declared {self.data.subgroup_source}")
        return self

    @_check
    def _data_fits_privacy(self) -> ExperimentSpec:
        problems = self.data.problems(private=self.privacy.enabled)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @_check
    def _class_weights_name_classes(self) -> ExperimentSpec:
        weights = self.training.class_weights
        if isinstance(weights, dict):
            classes = self.data.class_names()
            unknown = [c for c in weights if c not in classes]
            if unknown:
                raise ValueError(f"training.class_weights: {unknown[0]} is not a class (classes: {', '.join(classes)})")
        return self

    @_check
    def _fhir_codes_name_features(self) -> ExperimentSpec:
        columns = set(self.data.feature_columns())
        for column, coding in self.fhir.features.items():
            if column not in columns:
                raise ValueError(f"fhir.features: {column} is not a declared feature column")
            if coding.values and column not in self.data.categorical_columns():
                raise ValueError(f"fhir.features.{column}.values: {column} is numeric; value codes are for categories")
        return self

    @_check
    def _selection_fits_training(self) -> ExperimentSpec:
        selection, rounds = self.selection, self.training.rounds
        if selection.min_rounds > rounds:
            raise ValueError(f"selection.min_rounds: {selection.min_rounds} is more than training.rounds ({rounds})")
        if selection.patience is not None and not self.data.may_have_val_part():
            raise ValueError("selection.patience: early stopping needs a val part: set data.val_fraction or data.split_column")
        return self

    @_check
    def _enough_hospitals(self) -> ExperimentSpec:
        if self.strategy.min_hospitals > len(self.data.hospitals):
            raise ValueError(
                f"strategy.min_hospitals is {self.strategy.min_hospitals} but only "
                f"{len(self.data.hospitals)} hospitals are listed"
            )
        if self.strategy.secure_aggregation and len(self.data.hospitals) < 3:
            raise ValueError(f"strategy.secure_aggregation needs at least 3 hospitals (their sum hides each one's "
                             f"update), {len(self.data.hospitals)} are listed")
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


def _describe(err: ValidationError, data: dict[str, Any]) -> list[str]:
    """Every problem of a failed validation, one line each: ``field.path: problem``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "spec"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + _model_fields_hint(e["loc"], data)
        parts += [f"{loc}: {line}" if loc != "spec" else line for line in msg.splitlines() if line.strip()]
    return parts


def _model_fields_hint(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """``: images models take kind, width`` for an unknown field of ``model:`` (else nothing)."""
    if len(loc) != 2 or loc[0] != "model":
        return ""
    name = _modality_name(data.get("data"))
    try:
        fields = get_modality(name).model_spec.model_fields
    except UnknownModalityError:
        return ""
    return f": {name} models take {', '.join(fields)}"


#: The fields of the model section every modality shared before each had its own: a spec
#: stored by an earlier version (a registered version's ``spec.json``) carries them all.
_FORMER_MODEL_FIELDS = ("hidden", "dropout", "width")


def _stored_model_section(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the former shared model fields its modality's model section lacks."""
    model = data.get("model")
    try:
        fields = get_modality(_modality_name(data.get("data"))).model_spec.model_fields
    except UnknownModalityError:
        return data
    if not isinstance(model, dict):
        return data
    return {**data, "model": {k: v for k, v in model.items() if k in fields or k not in _FORMER_MODEL_FIELDS}}


def parse_spec(data: object, source: str = "spec", *, stored: bool = False) -> ExperimentSpec:
    """Validate a mapping (parsed YAML or JSON) as a spec.

    ``stored``: the mapping is a spec an earlier run wrote (a registered version's
    ``spec.json``): the model fields an earlier version wrote for every modality
    (``hidden``/``dropout`` on images, ``width`` on tables) are dropped, not refused.

    Raises:
        SpecError: one line per problem, each naming the source and the field at fault.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields at the top level")
    if stored:
        data = _stored_model_section(data)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("\n".join(f"{source}: {problem}" for problem in _describe(err, data))) from err


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
