"""``bioverse registry validate`` (registered by :mod:`platform_api.cli.registry`): a version's report on a local file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from platform_api.cli.access import ModelOpt, UriOpt, open_registry
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out, warn

__all__ = ["registry_validate"]


def _print_decision_rule(section: dict[str, Any]) -> None:
    """The version's decision rule and, for a threshold, how it decides on the data scored."""
    test = section.get("test") or {}
    if section.get("threshold") is None:
        out.print(f"Decision: prior-corrected argmax ({section['rule']})", highlight=False, markup=False)
        return
    rates = ", ".join(f"{k.replace('_', ' ')} {'n/a' if test.get(k) is None else f'{test[k]:.3f}'}"
                      for k in ("sensitivity", "specificity", "balanced_accuracy"))
    out.print(f"Decision: threshold {section['threshold']:.4g} ({section['rule']}): {rates}", highlight=False, markup=False)


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
    from experiments.registry_validate import run_local_validation, select_local_validation
    from serving.model_source import RegistryModel
    from training.held_out import PARTS

    if part not in PARTS:  # refused before MLflow is opened (and its tables created)
        raise CliInputError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    registry, name = open_registry(model, tracking_uri)
    selection = select_local_validation(registry, name, version, data, part)
    out.print(selection.sentence(), highlight=False)
    scorer = RegistryModel(registry.tracking_uri, name, require_approval=False).load(version).scorer
    result = run_local_validation(selection, scorer, output)
    for line in result.warnings:
        warn(line)
    out.print(f"{name} version {version} on {data} {result.summary}", highlight=False)
    _print_decision_rule(result.report["decision"])
    out.print(f"Report: {result.written['report.html']}", highlight=False)
