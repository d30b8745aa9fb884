"""What ``bioverse registry validate`` scores, for any modality: the held-out part of a validator's file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.errors import LocalValidationError
from training.fingerprint import dataset_fingerprint

__all__ = ["PARTS", "HeldOut", "LocalScores", "Part", "metric_text", "refuse_all", "training_hospital"]

Part = Literal["test", "val", "all"]
#: The parts ``registry validate --part`` accepts; ``test`` is the default.
PARTS: tuple[str, ...] = ("test", "val", "all")


@dataclass(frozen=True)
class HeldOut:
    """Which rows of a validator's file were scored, and why.

    Attributes:
        scored: Rows (patients or images) scored.
        excluded: Rows of the file left out (the parts the version trained or selected on).
        what: What was scored, in words (``the test part of the .npz``).
        hospital: The version's training hospital whose data the file is, if it is one.
    """

    scored: int
    excluded: int
    what: str
    hospital: str | None = None

    def sentence(self, unit: str) -> str:
        """``scored 120 held-out images (the test part of the .npz); 380 excluded``."""
        excluded = f"; {self.excluded} {unit} excluded" if self.excluded else "; none excluded"
        return f"scored {self.scored} held-out {unit} ({self.what}){excluded}"


@dataclass(frozen=True)
class LocalScores:
    """A modality's validation report of the held-out part of a validator's file.

    Attributes:
        report: The report (overall, subgroups, decision).
        meta: Report metadata the modality adds (classes; values unknown to the model, as caveats).
        summary: The headline metrics: ``(<n> patients, <k> events): AUROC ..., ...``.
        warnings: Lines the validator should see.
        files: Extra files to write beside the report, name -> text.
    """

    report: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def metric_text(value: Any) -> str:
    """A headline metric: three decimals, or ``n/a``."""
    return "n/a" if value is None else f"{value:.3f}"


def training_hospital(path: Path | str, spec: Any, tags: dict[str, str]) -> str | None:
    """The version's training hospital whose data ``path`` is, or None.

    Matched by content first (the version's ``dataset.<hospital>`` tags hold each
    hospital's :func:`~training.fingerprint.dataset_fingerprint`; a ``labels.csv`` stands
    for its folder), then by the path the run's spec gave the hospital. A hospital that
    named its dataset with ``dataset-id`` is recognised by path only.
    """
    source = Path(path).resolve()
    candidates = [source, source.parent] if source.name.lower() == "labels.csv" else [source]
    datasets = {tag.removeprefix("dataset."): value for tag, value in tags.items() if tag.startswith("dataset.")}
    if datasets:
        for candidate in candidates:
            try:
                fingerprint = dataset_fingerprint(candidate)
            except (OSError, ValueError):
                continue
            found = sorted(h for h, d in datasets.items() if d == fingerprint)
            if found:
                return found[0]
    for hospital in spec.data.hospitals:
        if hospital.path is not None and Path(hospital.path).resolve() in candidates:
            return hospital.id
    return None


def refuse_all(path: Path | str, hospital: str | None, unit: str) -> None:
    """Refuse ``--part all`` on one of the version's training datasets (it would score the model on its own training data).

    Raises:
        LocalValidationError: ``hospital`` trained the version on part of ``path``.
    """
    if hospital is not None:
        raise LocalValidationError(f"{path}: {hospital} trained this version on part of it; --part all would score "
                                   f"the model on its own training {unit}; use --part test or --part val")
