"""The imaging modality's members for data checks, reports, the packaged model and local validation."""

from __future__ import annotations

from typing import Any

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
