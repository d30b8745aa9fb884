"""``bioverse registry validate`` as a library: select the held-out part of a validator's file, score it, write the report."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.errors import LocalValidationError
from experiments.local_validation import PARTS, HeldOut
from experiments.registry import ModelRegistry
from experiments.review_records import VersionInfo
from experiments.settings import get_settings
from experiments.spec import ExperimentSpec, parse_spec

__all__ = ["LocalSelection", "LocalValidation", "default_report_folder", "run_local_validation",
           "select_local_validation", "unknown_category_lines"]


@dataclass(frozen=True)
class LocalSelection:
    """A registered version and the part of a validator's file ``registry validate`` scores.

    Attributes:
        name: The registered model.
        version: The version number.
        info: The version as the registry shows it (run id, experiment, tags).
        spec: The spec the version was trained under (its data contract).
        source: The validator's file or folder.
        data: The held-out data: a DataFrame of rows, or an ImageSplit whose ``test_*`` part is scored.
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
        spec = parse_spec(json.loads(Path(spec_path).read_text()), f"{name} v{version}")
    data, held, unit = _held_out(source, spec, info.tags, part)
    return LocalSelection(name, version, info, spec, Path(source), data, held, unit)


def _held_out(source: Path, spec: ExperimentSpec, tags: dict[str, str], part: str) -> tuple[Any, HeldOut, str]:
    from experiments.local_validation import held_out_images, held_out_rows
    from training.imaging.spec import ImageDataSpec

    if isinstance(spec.data, ImageDataSpec):
        split, held = held_out_images(source, spec, tags, part)  # type: ignore[arg-type]
        return split, held, "images"
    frame, held = held_out_rows(source, spec, tags, part)  # type: ignore[arg-type]
    return frame, held, "patients"


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
    if selection.unit == "images":
        report, meta, summary, warnings = _score_images(selection, scorer, meta)
    else:
        report, meta, summary, warnings = _score_rows(selection, scorer, meta)
    report["modality"] = selection.spec.data.modality  # rendered by the modality that built it
    written = write_report_artifacts(report, meta, folder)
    if "unknown_categories" in meta:
        (folder / "unknown_categories.json").write_text(json.dumps(meta["unknown_categories"], indent=2, sort_keys=True))
    return LocalValidation(report, written, summary, warnings)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _score_images(selection: LocalSelection, scorer: Any,
                  meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
    from training.decision import decision_on_scores
    from training.imaging.hospital import image_subgroups
    from training.imaging.validation import local_multiclass_report

    spec, split = selection.spec, selection.data
    classes = list(spec.data.classes)  # type: ignore[union-attr]
    probs = scorer.predict(split.test_images)
    report = local_multiclass_report(probs, split.test_labels, classes,
                                     image_subgroups(split, spec, selection.source), min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, probs, split.test_labels)
    overall = report["overall"]
    summary = (f"({overall['n']} images): accuracy {_fmt(overall['accuracy'])}, balanced accuracy "
               f"{_fmt(overall['balanced_accuracy'])}, macro AUROC {_fmt(overall['auroc'])}, ECE {_fmt(overall['ece'])}")
    return report, {**meta, "task": "multiclass", "classes": classes}, summary, []


def _score_rows(selection: LocalSelection, scorer: Any,
                meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
    from training.decision import decision_on_scores
    from training.tabular.hospital import report_subgroups
    from training.tabular.validation import local_report

    spec, frame = selection.spec, selection.data
    risk, label = scorer.score_columns(frame), frame[spec.data.label].to_numpy().astype(int)
    report = local_report(risk, label, report_subgroups(frame, spec), spec.validation.thresholds,
                          min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, risk, label)
    unknown = scorer.unknown_counts(frame)  # values the model never learned: scored as "other"
    warnings = unknown_category_lines(unknown)
    meta = {**meta, "unknown_categories": unknown, "caveats": [*meta.get("caveats", []), *warnings]}
    overall = report["overall"]
    summary = (f"({overall['n']} patients, {overall['positives']} events): AUROC {_fmt(overall['auroc'])}, "
               f"calibration slope {_fmt(overall['calibration_slope'])}, Brier {_fmt(overall['brier'])}, "
               f"ECE {_fmt(overall['ece'])}")
    return report, meta, summary, warnings


def unknown_category_lines(unknown: dict[str, dict[str, int]], examples: int = 5) -> list[str]:
    """One line per feature with values the model never learned (scored as ``other``)."""
    lines = []
    for column, counts in sorted(unknown.items()):
        shown = ", ".join(f"{v!r} ({n})" for v, n in list(counts.items())[:examples])
        more = f" and {len(counts) - examples} more" if len(counts) > examples else ""
        lines.append(f"{column}: {sum(counts.values())} values unknown to the model, scored as other: {shown}{more}")
    return lines
