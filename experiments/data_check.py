"""``bioverse data check`` as a library: every hospital of a spec checked by its modality, problems collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.errors import ExperimentError
from experiments.spec import ExperimentSpec
from training.errors import TrainingError
from training.modality import get_modality
from training.site_check import SiteCheck

__all__ = ["DataCheck", "SiteFailure", "check_data", "check_site"]


@dataclass(frozen=True)
class SiteFailure:
    """A hospital whose data could not be checked: its file breaks the contract or cannot be read."""

    hospital: str
    error: Exception

    def describe(self) -> str:
        """``<hospital>: <error message>``."""
        return f"{self.hospital}: {self.error}"


@dataclass(frozen=True)
class DataCheck:
    """What ``data check`` found across a spec's hospitals.

    Attributes:
        sites: Each hospital that met its contract (or has no path), in the spec's order.
        failures: Each hospital whose data failed, with its error.
        problems: Findings across hospitals that fail the check (``data.unknown_categories: refuse``).
        warnings: Findings across hospitals that are only shown.
    """

    sites: list[SiteCheck] = field(default_factory=list)
    failures: list[SiteFailure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No hospital failed and nothing across hospitals is refused."""
        return not self.failures and not self.problems


def check_site(spec: ExperimentSpec, hospital: Any) -> SiteCheck:
    """Check one hospital's data as a run would load and split it (a site without a path is
    checked at the hospital).

    Raises:
        DataContractError: the hospital's data breaks the contract (naming file, column and row).
    """
    if hospital.path is None:
        return SiteCheck(hospital.id, [f"{hospital.id}: no path (deployment site, checked at the hospital)"])
    return get_modality(spec.data.modality).check_site(spec, hospital)


def check_data(spec: ExperimentSpec) -> DataCheck:
    """Check every hospital named in ``spec``; one hospital's failure does not stop the others.

    A hospital fails on a domain error or on the OS refusing its own data path; any other
    error propagates (a bug keeps its traceback).
    """
    result = DataCheck()
    for hospital in spec.data.hospitals:
        try:
            result.sites.append(check_site(spec, hospital))
        except (TrainingError, ExperimentError, OSError) as e:
            if isinstance(e, OSError) and not _about(e, hospital.path):
                raise
            result.failures.append(SiteFailure(hospital.id, e))
    checked = [s for s in result.sites if s.detail is not None]
    review = get_modality(spec.data.modality).review_sites(spec, checked)
    result.problems.extend(review.problems)
    result.warnings.extend(review.warnings)
    return result


def _about(e: OSError, path: Path | str | None) -> bool:
    """Whether the OS error names the hospital's data path (or a file under it)."""
    if path is None or e.filename is None:
        return False
    failed, given = Path(e.filename).resolve(), Path(path).resolve()
    return failed == given or given in failed.parents
