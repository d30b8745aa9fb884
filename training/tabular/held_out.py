"""``registry validate`` for tables: the held-out rows of a validator's file, scored and reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from training.errors import LocalValidationError
from training.held_out import HeldOut, LocalScores, Part, metric_text, refuse_all, training_hospital
from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.data import load_split

__all__ = ["held_out_rows", "score_held_out_rows", "unknown_category_lines"]


def held_out_rows(path: Path | str, spec: Any, tags: dict[str, str],
                  part: Part = "test") -> tuple[pd.DataFrame, HeldOut]:
    """The rows of a CSV/Parquet file to score for ``registry validate`` (same rules as
    :func:`training.imaging.held_out.held_out_images`: the split column's test rows, the part a training hospital's
    run held out, or every row of a validator's own file).

    Raises:
        LocalValidationError: the part asked for is empty or would hold training rows.
        DataContractError: the file breaks the data contract.
    """
    data = spec.data
    source = Path(path)
    hospital = training_hospital(source, spec, tags)
    column = data.split_column
    has_column = column is not None and column in _table_columns(source)
    if not has_column and hospital is None:
        if part == "val":
            raise LocalValidationError(f"{path}: has no val part (no split column, not a training dataset of this "
                                       "version); leave --part out to score every row")
        frame = load_hospital_table(source, _without_split(data))
        return frame, HeldOut(len(frame), 0, "every row: not one of this version's training datasets and no split "
                                             "column in it", None)
    split = load_split(source, data.contract, data.test_fraction, spec.seed, val_fraction=data.val_fraction)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    total = sum(len(p) for p in parts.values())
    origin = f"column '{column}'" if has_column else f"the run's split of {hospital}'s patients (seed {spec.seed})"
    if part == "all":
        refuse_all(path, hospital, "rows")
        frame = pd.concat(list(parts.values()), ignore_index=True)
        return frame, HeldOut(len(frame), 0, f"every part of {origin}, --part all", hospital)
    frame = parts[part].reset_index(drop=True)
    if frame.empty:
        raise LocalValidationError(f"{path}: the {part} part of {origin} holds no rows")
    what = f"the {part} rows of {origin}" + (f", held out from {hospital}'s training" if hospital is not None else "")
    return frame, HeldOut(len(frame), total - len(frame), what, hospital)


def _table_columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except Exception:  # noqa: BLE001 - the loader names an unreadable file properly
        return []


def _without_split(data: Any) -> DataContract:
    contract = data.contract
    if contract.split_column is None:
        return contract
    return dataclasses.replace(contract, split_column=None)


def score_held_out_rows(spec: Any, frame: pd.DataFrame, source: Path, scorer: Any) -> LocalScores:
    """Score the selected rows with the version's ``scorer``: the binary report, and the values
    the model never learned (scored as ``other``) as caveats and ``unknown_categories.json``."""
    from training.decision import decision_on_scores
    from training.tabular.hospital import report_subgroups
    from training.tabular.validation import local_report

    risk, label = scorer.score_columns(frame), frame[spec.data.label].to_numpy().astype(int)
    report = local_report(risk, label, report_subgroups(frame, spec), spec.validation.thresholds,
                          min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, risk, label)
    unknown = scorer.unknown_counts(frame)
    warnings = unknown_category_lines(unknown)
    overall = report["overall"]
    summary = (f"({overall['n']} patients, {overall['positives']} events): AUROC {metric_text(overall['auroc'])}, "
               f"calibration slope {metric_text(overall['calibration_slope'])}, Brier {metric_text(overall['brier'])}, "
               f"ECE {metric_text(overall['ece'])}")
    return LocalScores(report, {"unknown_categories": unknown, "caveats": warnings}, summary, warnings,
                       {"unknown_categories.json": json.dumps(unknown, indent=2, sort_keys=True)})


def unknown_category_lines(unknown: dict[str, dict[str, int]], examples: int = 5) -> list[str]:
    """One line per feature with values the model never learned (scored as ``other``)."""
    lines = []
    for column, counts in sorted(unknown.items()):
        shown = ", ".join(f"{v!r} ({n})" for v, n in list(counts.items())[:examples])
        more = f" and {len(counts) - examples} more" if len(counts) > examples else ""
        lines.append(f"{column}: {sum(counts.values())} values unknown to the model, scored as other: {shown}{more}")
    return lines
