"""Tabular risk models as a :class:`training.modality.Modality` (registered as ``tabular``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.data_section import DataSection
from training.modality import LocalRound, LocalSite, Preprocessor, RoundCharge, RoundOutcome, StatisticsCharge, StatisticsReview
from training.model_section import ModelSection
from training.tabular.registry_side import TabularRegistrySide

__all__ = ["TABULAR", "TabularModality"]


class TabularModality(TabularRegistrySide):
    """Binary risk models on the hospitals' tables; heavy modules are imported on call."""

    name = "tabular"
    multiclass_aggregates = False
    uses_gpu = False
    uses_images = False
    summary_metrics = (("{part} AUROC", "auroc"), ("AUPRC", "auprc"), ("Brier", "brier"))
    summary_validation = (("AUROC", "validation.auroc"), ("calibration slope", "validation.calibration_slope"),
                          ("Brier", "validation.brier"))
    unit = "patients"

    @property
    def data_spec(self) -> type[DataSection]:
        """:class:`training.tabular.spec.DataSpec`."""
        from training.tabular.spec import DataSpec

        return DataSpec

    @property
    def model_spec(self) -> type[ModelSection]:
        """:class:`training.tabular.spec.TabularModelSpec`."""
        from training.tabular.spec import TabularModelSpec

        return TabularModelSpec

    # ---- the model ----
    def class_names(self, spec: Any) -> list[str]:
        """A risk model's two classes, ``0`` and ``1``."""
        return spec.data.class_names()

    def model_hparams(self, spec: Any) -> dict[str, Any]:
        """Learning rate and optimiser; an MLP's hidden layers and dropout."""
        from training.tabular.hospital import model_hparams

        return model_hparams(spec)

    def build_model(self, spec: Any, preprocessor: Preprocessor) -> Any:
        """A fresh risk model over the encoder's columns."""
        from training.tabular.models import build_model

        return build_model(spec.model.kind, preprocessor.input_dim, **self.model_hparams(spec))  # type: ignore[attr-defined]

    # ---- hospital side ----
    def local_statistics(self, spec: Any, site: LocalSite, charge: StatisticsCharge) -> dict[str, Any]:
        """Column statistics of the training rows (DP-noised with DP on) and the schema fingerprint."""
        from training.tabular.hospital import local_statistics

        return local_statistics(spec, site, charge)

    def preprocessor_from_json(self, spec: Any, text: str) -> Preprocessor:
        """The federation's feature encoder."""
        from training.tabular.preprocessing import FeatureEncoder

        return FeatureEncoder.from_json(text)

    def train_round(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                    plan: LocalRound, charge: RoundCharge) -> RoundOutcome:
        """One DP-SGD round on the training rows."""
        from training.tabular.hospital import train_round

        return train_round(spec, site, preprocessor, state, plan, charge)  # type: ignore[arg-type]

    def evaluate(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any]) -> dict[str, float]:
        """Loss and risk metrics on the test rows."""
        from training.tabular.hospital import evaluate

        return evaluate(spec, site, preprocessor, state)  # type: ignore[arg-type]

    def val_scores(self, spec: Any, site: LocalSite, preprocessor: Preprocessor,
                   state: dict[str, Any]) -> tuple[Any, Any] | None:
        """``[1 - p, p]`` and labels on the val rows."""
        from training.tabular.hospital import val_scores

        return val_scores(spec, site, preprocessor, state)  # type: ignore[arg-type]

    def validation_aggregates(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                              class_scale: list[float] | None) -> dict[str, Any]:
        """Binary aggregates on the test rows (a risk model serves a threshold, not ``class_scale``)."""
        from training.tabular.hospital import validation_aggregates

        return validation_aggregates(spec, site, preprocessor, state)  # type: ignore[arg-type]

    # ---- coordinator side ----
    def class_counts(self, stats: Mapping[str, Any]) -> list[int] | None:
        """``[negatives, positives]`` (DP-noised with DP on), when the hospital sent them."""
        return [int(round(c)) for c in stats["labels"]] if "labels" in stats else None

    def review_statistics(self, spec: Any, stats: Mapping[str, Mapping[str, Any]]) -> StatisticsReview | None:
        """The categorical vocabularies: values not shared by the federation or not declared."""
        from training.tabular.federated import vocabulary_review

        return vocabulary_review(spec, stats)

    def merge_statistics(self, spec: Any, stats: list[Mapping[str, Any]]) -> Preprocessor:
        """The feature encoder fitted on the merged column statistics."""
        from training.tabular.federated import federated_encoder

        return federated_encoder(spec, stats)

    def validation_report(self, spec: Any, parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Merged binary aggregates and the report at ``validation.thresholds``."""
        from training.tabular.federated import validation_report

        return validation_report(spec, parts)

    def report_meta(self, spec: Any, preprocessor: Preprocessor, class_counts: Mapping[str, list[int]]) -> dict[str, Any]:
        """The model's feature columns."""
        return {"features": [*spec.data.numeric, *spec.data.categorical]}

    # ---- H3: data checks, the report's renderer, the packaged model and its scorer, local validation:
    # inherited from TabularRegistrySide (training.tabular.registry_side) ----


#: The registered instance (``training.modality.REGISTRY["tabular"]``).
TABULAR = TabularModality()
