"""The imaging modality's members for data checks, reports, the packaged model and local validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.held_out import HeldOut, LocalScores
from training.packaging import PackagedModel
from training.report_render import ReportRenderer
from training.site_check import SiteCheck, SitesReview

__all__ = ["ImagingRegistrySide"]


class ImagingRegistrySide:
    """Mixed into :class:`training.imaging.modality.ImagingModality`; heavy modules are imported on call."""

    def check_site(self, spec: Any, hospital: Any) -> SiteCheck:
        """The images' split and the training class mix."""
        from training.imaging.data_check import check_site

        return check_site(spec, hospital)

    def review_sites(self, spec: Any, checks: list[SiteCheck]) -> SitesReview:
        """Nothing across image hospitals: their classes are declared."""
        from training.imaging.data_check import review_sites

        return review_sites(spec, checks)

    def report_renderer(self) -> ReportRenderer:
        """The validation report's model card, HTML page and plots."""
        from training.imaging.report import multiclass_model_card, render_multiclass_html
        from training.imaging.report_plots import render_multiclass_plots

        return ReportRenderer(model_card=multiclass_model_card, render_html=render_multiclass_html, render_plots=render_multiclass_plots)

    def package_model(self, directory: Path, model: Any, preprocessor: Any, kind: str, hparams: dict[str, Any],
                      decision: Any | None = None) -> PackagedModel:
        """The model's package files written into ``directory``, its MLflow pyfunc, signature and example."""
        from training.imaging.package import package_vision_model

        return package_vision_model(directory, model, preprocessor, kind, hparams, decision)

    def load_scorer(self, directory: Path) -> Any:
        """The scorer of a package written by :meth:`package_model`."""
        from training.imaging.scoring import VisionScorer

        return VisionScorer.from_files(directory)

    def select_held_out(self, spec: Any, source: Path, tags: dict[str, str], part: str) -> tuple[Any, HeldOut, str]:
        """The images of ``source`` that ``registry validate`` scores, what they are, and the unit (``images``)."""
        from training.imaging.held_out import held_out_images

        data, held = held_out_images(source, spec, tags, part)  # type: ignore[arg-type]
        return data, held, "images"

    def score_held_out(self, spec: Any, data: Any, source: Path, scorer: Any) -> LocalScores:
        """The selected images scored by the version's ``scorer``, as a validation report."""
        from training.imaging.held_out import score_held_out_images

        return score_held_out_images(spec, data, source, scorer)
