"""The tabular modality's members for data checks, reports, the packaged model and local validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
