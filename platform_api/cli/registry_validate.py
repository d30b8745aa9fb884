"""``bioverse registry validate`` (registered by :mod:`platform_api.cli.registry`): a version's report on a local file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from platform_api.cli.access import ModelOpt, UriOpt, open_registry
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out, warn

if TYPE_CHECKING:
    from experiments.registry import ModelRegistry
    from experiments.review_records import VersionInfo
    from experiments.spec import ExperimentSpec

__all__ = ["registry_validate"]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_decision_rule(section: dict[str, Any]) -> None:
    """The version's decision rule and, for a threshold, how it decides on the data scored."""
    test = section.get("test") or {}
    if section.get("threshold") is None:
        out.print(f"Decision: prior-corrected argmax ({section['rule']})", highlight=False, markup=False)
        return
    rates = ", ".join(f"{k.replace('_', ' ')} {'n/a' if test.get(k) is None else f'{test[k]:.3f}'}"
                      for k in ("sensitivity", "specificity", "balanced_accuracy"))
    out.print(f"Decision: threshold {section['threshold']:.4g} ({section['rule']}): {rates}", highlight=False, markup=False)


def _unknown_lines(unknown: dict[str, dict[str, int]], examples: int = 5) -> list[str]:
    """One line per feature with values the model never learned (scored as ``other``)."""
    lines = []
    for column, counts in sorted(unknown.items()):
        shown = ", ".join(f"{v!r} ({n})" for v, n in list(counts.items())[:examples])
        more = f" and {len(counts) - examples} more" if len(counts) > examples else ""
        lines.append(f"{column}: {sum(counts.values())} values unknown to the model, scored as other: {shown}{more}")
    return lines


def _version_spec(registry: ModelRegistry, name: str, version: str, info: VersionInfo, data: Path) -> ExperimentSpec:
    """The spec the version was trained under (its data contract)."""
    from experiments.spec import parse_spec

    if info.run_id is None:
        raise CliInputError(f"{name} version {version} has no training run, so no data contract to check {data} against")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = registry.client.download_artifacts(info.run_id, "spec.json", tmp)
        return parse_spec(json.loads(Path(spec_path).read_text()), f"{name} v{version}")


def _validate_images(registry: ModelRegistry, name: str, version: str, spec: ExperimentSpec, info: VersionInfo,
                     data: Path, part: str, folder: Path, meta: dict[str, Any]) -> Path:
    """Score the held-out images of ``data`` and write the multi-class report; returns its HTML page."""
    from experiments.local_validation import held_out_images
    from experiments.report import write_report_artifacts
    from serving.model_source import RegistryModel
    from training.decision import decision_on_scores
    from training.imaging.hospital import image_subgroups
    from training.imaging.validation import local_multiclass_report

    whole, held = held_out_images(data, spec, info.tags, part)  # type: ignore[arg-type]
    meta["hospitals"] = [f"local: {data.name}, {held.sentence('images')}"]
    out.print(f"{name} version {version} on {data}: {held.sentence('images')}", highlight=False)
    vision = RegistryModel(registry.tracking_uri, name, require_approval=False).load(version).scorer
    probs = vision.predict(whole.test_images)
    classes = list(spec.data.classes)  # type: ignore[union-attr]
    report = local_multiclass_report(probs, whole.test_labels, classes, image_subgroups(whole, spec, data),
                                     min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(vision.decision, probs, whole.test_labels)
    written = write_report_artifacts(report, {**meta, "task": "multiclass", "classes": classes}, folder)
    overall = report["overall"]
    out.print(f"{name} version {version} on {data} ({overall['n']} images): accuracy {_fmt(overall['accuracy'])}, "
              f"balanced accuracy {_fmt(overall['balanced_accuracy'])}, macro AUROC {_fmt(overall['auroc'])}, "
              f"ECE {_fmt(overall['ece'])}", highlight=False)
    _print_decision_rule(report["decision"])
    return written["report.html"]


def _validate_table(registry: ModelRegistry, name: str, version: str, spec: ExperimentSpec, info: VersionInfo,
                    data: Path, part: str, folder: Path, meta: dict[str, Any]) -> Path:
    """Score the held-out rows of ``data`` and write the report; returns its HTML page."""
    from experiments.local_validation import held_out_rows
    from experiments.report import write_report_artifacts
    from serving.model_source import RegistryModel
    from training.decision import decision_on_scores
    from training.tabular.hospital import report_subgroups
    from training.tabular.validation import local_report

    frame, held = held_out_rows(data, spec, info.tags, part)  # type: ignore[arg-type]
    meta["hospitals"] = [f"local: {data.name}, {held.sentence('patients')}"]
    out.print(f"{name} version {version} on {data}: {held.sentence('patients')}", highlight=False)
    scorer = RegistryModel(registry.tracking_uri, name, require_approval=False).load(version).scorer
    risk, label = scorer.score_columns(frame), frame[spec.data.label].to_numpy().astype(int)  # type: ignore[union-attr]
    report = local_report(risk, label, report_subgroups(frame, spec), spec.validation.thresholds,
                          min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, risk, label)
    unknown = scorer.unknown_counts(frame)  # values the model never learned: scored as "other"
    meta["unknown_categories"] = unknown
    meta["caveats"] = [*meta.get("caveats", []), *_unknown_lines(unknown)]
    written = write_report_artifacts(report, meta, folder)
    (folder / "unknown_categories.json").write_text(json.dumps(unknown, indent=2, sort_keys=True))
    for line in _unknown_lines(unknown):
        warn(line)
    overall = report["overall"]
    out.print(f"{name} version {version} on {data} ({overall['n']} patients, {overall['positives']} events): "
              f"AUROC {_fmt(overall['auroc'])}, calibration slope {_fmt(overall['calibration_slope'])}, "
              f"Brier {_fmt(overall['brier'])}, ECE {_fmt(overall['ece'])}", highlight=False)
    _print_decision_rule(report["decision"])
    return written["report.html"]


@one_line_errors
def registry_validate(
    version: Annotated[str, typer.Argument(help="The version number.")],
    data: Annotated[Path, typer.Option(help="Your own validation file (CSV or Parquet; for an image model a folder with "
                                            "labels.csv or a .npz), under the experiment's data contract.")],
    output: Annotated[Path | None, typer.Option(help="Folder for the report (default: <data dir>/validation/<model>-v<version>).")] = None,
    part: Annotated[str, typer.Option(help="test (default): only held-out data; val: the val part; all: every row "
                                           "(refused for the version's own training data).")] = "test",
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Run the validation report on a local validation file of your own; nothing leaves this machine.

    Only held-out data is scored: a .npz's test part, the rows a split column marks test,
    the part a training hospital's run held out (the file is one of the version's training
    datasets), or every row of a file the registry does not know. The output says which.
    """
    from experiments.local_validation import PARTS
    from experiments.settings import get_settings
    from experiments.spec import ImageDataSpec

    if part not in PARTS:
        raise CliInputError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    registry, name = open_registry(model, tracking_uri)
    info = registry.show(name, version)
    spec = _version_spec(registry, name, version, info, data)
    folder = output or get_settings().data_dir / "validation" / f"{name}-v{version}"
    meta: dict[str, Any] = {"model_name": name, "version": version, "experiment": info.experiment,
                            "run_id": info.run_id, "hospitals": [f"local: {data.name}"]}
    validate = _validate_images if isinstance(spec.data, ImageDataSpec) else _validate_table
    report_page = validate(registry, name, version, spec, info, data, part, folder, meta)
    out.print(f"Report: {report_page}", highlight=False)
