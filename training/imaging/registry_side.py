"""The imaging modality's members for data checks, reports, the packaged model and local validation."""

from __future__ import annotations

from typing import Any

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
