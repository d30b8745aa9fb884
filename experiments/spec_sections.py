"""The experiment spec's sections besides ``data:`` and ``model:``: strategy, training, privacy, validation, selection, registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from training.data_section import DataSection, StrictSection
from training.errors import PrivacyConfigError

if TYPE_CHECKING:
    from training.privacy import DPConfig

__all__ = [
    "PrivacySpec", "RegistrySpec", "SelectionSpec", "StrategySpec", "ThresholdSpec", "TrainingSpec",
    "ValidationSpec",
]


class StrategySpec(StrictSection):
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
    secure_aggregation: bool = Field(
        default=False, description="SecAgg+: the coordinator learns only the sum of the hospitals' (DP-noised) updates; "
                                   "needs 3 hospitals or more (docs/secure-aggregation.md)")


class TrainingSpec(StrictSection):
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


class PrivacySpec(StrictSection):
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
    grad_sample_mode: str | None = Field(
        default=None, min_length=1, max_length=32,
        description="per-sample gradients: one of the model section's grad_sample_modes (default: its first; tabular "
                    "fused, images hooks); the spec checks it")
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
            # builds a DPConfig: its own checks run here (the mode is the model section's to check)
            _ = self._dp_config(grad_sample_mode="hooks")
        except PrivacyConfigError as err:
            raise ValueError(str(err)) from err
        return self

    @property
    def dp_config(self) -> DPConfig:
        """The training layer's DP settings (``grad_sample_mode`` as the spec resolved it)."""
        if self.grad_sample_mode is None:
            raise PrivacyConfigError("privacy.grad_sample_mode is resolved by the experiment spec (its model section)")
        return self._dp_config(self.grad_sample_mode)

    def _dp_config(self, grad_sample_mode: str) -> DPConfig:
        from training.privacy import DPConfig

        return DPConfig(
            enabled=self.enabled,
            target_epsilon=self.target_epsilon,
            target_delta=self.target_delta,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            accountant=self.accountant,
            clipping=self.clipping,
            target_quantile=self.target_quantile,
            clip_learning_rate=self.clip_learning_rate,
        )


class ThresholdSpec(StrictSection):
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


class ValidationSpec(StrictSection):
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

    def subgroup_columns(self, data: DataSection) -> list[str]:
        """The columns the report is broken down by (besides hospital): by default ``sex``
        and ``age`` where the data declares them (for images, among ``data.metadata``)."""
        if self.subgroups is None:
            return [c for c in ("sex", "age") if c in data.subgroup_candidates()]
        return list(self.subgroups)


class SelectionSpec(StrictSection):
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


class RegistrySpec(StrictSection):
    """What registration does with the new version.

    Attributes:
        candidate_despite_warning: Give the ``candidate`` alias to a version whose federated
            validation found it no better than the trivial model (the version is registered
            with its ``validation.quality_warning`` tag either way).
    """

    candidate_despite_warning: bool = False
