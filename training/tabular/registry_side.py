"""The tabular modality's members for data checks, reports, the packaged model and local validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.held_out import HeldOut, LocalScores
from training.packaging import PackagedModel
from training.report_render import ReportRenderer
from training.site_check import SiteCheck, SitesReview

__all__ = ["TabularRegistrySide"]


class TabularRegistrySide:
    """Mixed into :class:`training.tabular.modality.TabularModality`; heavy modules are imported on call."""

    def check_site(self, spec: Any, hospital: Any) -> SiteCheck:
        """The table's split, prevalence, missing codes and canonicalised spellings."""
        from training.tabular.data_check import check_site

        return check_site(spec, hospital)

    def review_sites(self, spec: Any, checks: list[SiteCheck]) -> SitesReview:
        """Categorical values outside the declared list or held by one hospital only."""
        from training.tabular.data_check import review_sites

        return review_sites(spec, checks)

    def report_renderer(self) -> ReportRenderer:
        """The validation report's model card, HTML page and plots."""
        from training.tabular.report import model_card, render_html
        from training.tabular.report_plots import render_plots

        return ReportRenderer(model_card=model_card, render_html=render_html, render_plots=render_plots)

    def package_model(self, directory: Path, model: Any, preprocessor: Any, kind: str, hparams: dict[str, Any],
                      decision: Any | None = None) -> PackagedModel:
        """The model's package files written into ``directory``, its MLflow pyfunc, signature and example."""
        from training.tabular.package import package_risk_model

        return package_risk_model(directory, model, preprocessor, kind, hparams, decision)

    def load_scorer(self, directory: Path) -> Any:
        """The scorer of a package written by :meth:`package_model`."""
        from training.tabular.scoring import RiskScorer

        return RiskScorer.from_files(directory)

    def select_held_out(self, spec: Any, source: Path, tags: dict[str, str], part: str) -> tuple[Any, HeldOut, str]:
        """The patients of ``source`` that ``registry validate`` scores, what they are, and the unit (``patients``)."""
        from training.tabular.held_out import held_out_rows

        data, held = held_out_rows(source, spec, tags, part)  # type: ignore[arg-type]
        return data, held, "patients"

    def score_held_out(self, spec: Any, data: Any, source: Path, scorer: Any) -> LocalScores:
        """The selected patients scored by the version's ``scorer``, as a validation report."""
        from training.tabular.held_out import score_held_out_rows

        return score_held_out_rows(spec, data, source, scorer)
