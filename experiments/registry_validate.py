"""``bioverse registry validate`` as a library: select the held-out part of a validator's file, score it, write the report."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.registry import ModelRegistry
from experiments.review_records import VersionInfo
from experiments.settings import get_settings
from experiments.spec import ExperimentSpec, parse_spec
from training.errors import LocalValidationError
from training.held_out import PARTS, HeldOut

__all__ = ["LocalSelection", "LocalValidation", "default_report_folder", "run_local_validation",
           "select_local_validation"]


@dataclass(frozen=True)
class LocalSelection:
    """A registered version and the part of a validator's file ``registry validate`` scores.

    Attributes:
        name: The registered model.
        version: The version number.
        info: The version as the registry shows it (run id, experiment, tags).
        spec: The spec the version was trained under (its data contract).
        source: The validator's file or folder.
        data: The held-out data, as the modality selected it (rows; an image split's ``test_*`` part).
        held: Which rows or images were scored, and why.
        unit: What was scored, in words (``patients`` or ``images``).
    """

    name: str
    version: str
    info: VersionInfo
    spec: ExperimentSpec
    source: Path
    data: Any
    held: HeldOut
    unit: str

    def sentence(self) -> str:
        """``<name> version <v> on <file>: scored 120 held-out patients (...); 380 patients excluded``."""
        return f"{self.name} version {self.version} on {self.source}: {self.held.sentence(self.unit)}"


@dataclass(frozen=True)
class LocalValidation:
    """The validation report of one version on a validator's own file.

    Attributes:
        report: The report (overall, subgroups, decision), as ``report.json`` holds it.
        written: The files written, file name -> path (``report.html`` among them).
        summary: The headline metrics: ``(<n> patients, <k> events): AUROC ..., ...``.
        warnings: Lines the validator should see (values unknown to the model).
    """

    report: dict[str, Any]
    written: dict[str, Path]
    summary: str
    warnings: list[str] = field(default_factory=list)


def default_report_folder(name: str, version: str) -> Path:
    """Where ``registry validate`` writes a report without ``--output``: ``<data dir>/validation/<model>-v<version>``."""
    return get_settings().data_dir / "validation" / f"{name}-v{version}"


def select_local_validation(registry: ModelRegistry, name: str, version: str, source: Path,
                            part: str = "test") -> LocalSelection:
    """The version, its training spec and the held-out part of ``source`` to score.

    Raises:
        LocalValidationError: ``part`` is not one of :data:`PARTS`, the version has no training
            run, or the part asked for is empty or holds the version's training data.
        DataContractError: the file breaks the version's data contract.
    """
    if part not in PARTS:
        raise LocalValidationError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    info = registry.show(name, version)
    if info.run_id is None:
        raise LocalValidationError(f"{name} version {version} has no training run, so no data contract to check "
                                   f"{source} against")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = registry.client.download_artifacts(info.run_id, "spec.json", tmp)
        spec = parse_spec(json.loads(Path(spec_path).read_text()), f"{name} v{version}", stored=True)
    data, held, unit = spec.modality.select_held_out(spec, Path(source), info.tags, part)
    return LocalSelection(name, version, info, spec, Path(source), data, held, unit)


def run_local_validation(selection: LocalSelection, scorer: Any, folder: Path | None = None) -> LocalValidation:
    """Score the selected part with the version's ``scorer`` and write the report into ``folder``.

    Args:
        selection: What :func:`select_local_validation` chose.
        scorer: The version's scorer, as the model loader builds it from its package.
        folder: Where the report goes (default: :func:`default_report_folder`).
    """
    from experiments.report import write_report_artifacts

    folder = folder or default_report_folder(selection.name, selection.version)
    meta: dict[str, Any] = {"model_name": selection.name, "version": selection.version,
                            "experiment": selection.info.experiment, "run_id": selection.info.run_id,
                            "hospitals": [f"local: {selection.source.name}, {selection.held.sentence(selection.unit)}"]}
    modality = selection.spec.modality
    scores = modality.score_held_out(selection.spec, selection.data, selection.source, scorer)
    report = {**scores.report, "modality": modality.name}  # rendered by the modality that built it
    written = write_report_artifacts(report, {**meta, **scores.meta}, folder)
    for name, text in scores.files.items():
        (folder / name).write_text(text)
    return LocalValidation(report, written, scores.summary, scores.warnings)
