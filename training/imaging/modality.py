"""Image classifiers as a :class:`training.modality.Modality` (registered as ``images``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.data_section import DataSection
from training.imaging.registry_side import ImagingRegistrySide
from training.modality import LocalRound, LocalSite, Preprocessor, RoundCharge, RoundOutcome, StatisticsCharge, StatisticsReview
from training.model_section import ModelSection

__all__ = ["IMAGING", "ImagingModality"]


class ImagingModality(ImagingRegistrySide):
    """Multi-class image classifiers on the hospitals' images; heavy modules are imported on call."""

    name = "images"
    multiclass_aggregates = True
    uses_gpu = True
    uses_images = True
    summary_metrics = (("{part} accuracy", "accuracy"), ("macro AUROC", "auroc"), ("loss", "loss"))
    summary_validation = (("accuracy", "validation.accuracy"), ("balanced accuracy", "validation.balanced_accuracy"),
                          ("macro AUROC", "validation.auroc"), ("ECE", "validation.ece"))
    unit = "images"

    @property
    def data_spec(self) -> type[DataSection]:
        """:class:`training.imaging.spec.ImageDataSpec`."""
        from training.imaging.spec import ImageDataSpec

        return ImageDataSpec

    @property
    def model_spec(self) -> type[ModelSection]:
        """:class:`training.imaging.spec.ImageModelSpec`."""
        from training.imaging.spec import ImageModelSpec

        return ImageModelSpec

    # ---- the model ----
    def class_names(self, spec: Any) -> list[str]:
        """The spec's classes, in the order of the model's outputs."""
        return spec.data.class_names()

    def model_hparams(self, spec: Any) -> dict[str, Any]:
        """Learning rate and optimiser; the first stage's width when the spec sets it."""
        from training.imaging.hospital import model_hparams

        return model_hparams(spec)

    def build_model(self, spec: Any, preprocessor: Preprocessor) -> Any:
        """A fresh CNN/ResNet shaped by the preprocessor's channels and classes."""
        from training.imaging.hospital import build_model

        return build_model(spec, preprocessor)  # type: ignore[arg-type]

    # ---- hospital side ----
    def local_statistics(self, spec: Any, site: LocalSite, charge: StatisticsCharge) -> dict[str, Any]:
        """Pixel sums and class counts of the training images (DP-noised with DP on)."""
        from training.imaging.hospital import local_statistics

        return local_statistics(spec, site, charge)

    def preprocessor_from_json(self, spec: Any, text: str) -> Preprocessor:
        """The federation's image preprocessor."""
        from training.imaging.preprocessing import ImagePreprocessor

        return ImagePreprocessor.from_json(text)

    def train_round(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                    plan: LocalRound, charge: RoundCharge) -> RoundOutcome:
        """One DP-SGD round on the training images (GPU when present)."""
        from training.imaging.hospital import train_round

        return train_round(spec, site, preprocessor, state, plan, charge)  # type: ignore[arg-type]

    def evaluate(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any]) -> dict[str, float]:
        """Loss, accuracy and macro AUROC on the test images."""
        from training.imaging.hospital import evaluate

        return evaluate(spec, site, preprocessor, state)  # type: ignore[arg-type]

    def val_scores(self, spec: Any, site: LocalSite, preprocessor: Preprocessor,
                   state: dict[str, Any]) -> tuple[Any, Any] | None:
        """Class probabilities and labels on the val images."""
        from training.imaging.hospital import val_scores

        return val_scores(spec, site, preprocessor, state)  # type: ignore[arg-type]

    def validation_aggregates(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                              class_scale: list[float] | None) -> dict[str, Any]:
        """Multi-class aggregates on the test images, with the served labels' confusion under ``class_scale``."""
        from training.imaging.hospital import validation_aggregates

        return validation_aggregates(spec, site, preprocessor, state, class_scale)  # type: ignore[arg-type]

    # ---- coordinator side ----
    def class_counts(self, stats: Mapping[str, Any]) -> list[int] | None:
        """Training images per class (DP-noised with DP on)."""
        return [int(c) for c in stats["classes"]]

    def review_statistics(self, spec: Any, stats: Mapping[str, Mapping[str, Any]]) -> StatisticsReview | None:
        """Nothing to review: pixel sums and class counts name no values."""
        return None

    def merge_statistics(self, spec: Any, stats: list[Mapping[str, Any]]) -> Preprocessor:
        """The preprocessor with the pooled (or the spec's) normalisation."""
        from training.imaging.federated import federated_preprocessor

        return federated_preprocessor(spec, stats)

    def validation_report(self, spec: Any, parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Merged multi-class aggregates and their report."""
        from training.imaging.federated import validation_report

        return validation_report(parts)

    def report_meta(self, spec: Any, preprocessor: Preprocessor, class_counts: Mapping[str, list[int]]) -> dict[str, Any]:
        """Task, classes, input description and class counts."""
        from training.imaging.federated import report_meta

        return report_meta(spec, preprocessor, class_counts)  # type: ignore[arg-type]

    # ---- H3: data checks, the report's renderer, the packaged model and its scorer, local validation:
    # inherited from ImagingRegistrySide (training.imaging.registry_side) ----


#: The registered instance (``training.modality.REGISTRY["images"]``).
IMAGING = ImagingModality()
