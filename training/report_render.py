"""Shared pieces of every validation report's rendering: canonical JSON, formatting, card rows, Markdown."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AUROC_DROP_FLAG", "NA", "SLOPE_BAND", "SMALL_EVENTS", "SMALL_N", "WARN", "ReportRenderer", "canonical_json",
    "card_provenance", "ci_text", "decision_rows", "finite", "group_title", "int_text", "is_multiclass",
    "markdown_card", "md_escape", "md_table", "model_details", "num_text", "pct_text", "report_modality",
    "report_sha256", "subgroup_tables", "text_or_na",
]


#: A subgroup is flagged when its AUROC is more than this below the overall AUROC ...
AUROC_DROP_FLAG = 0.05
#: ... or its calibration slope lies outside this band.
SLOPE_BAND = (0.8, 1.2)
#: Subgroups smaller than this (patients, or outcome events) get an imprecision caveat.
SMALL_N = 100
SMALL_EVENTS = 10
NA = "n/a"


WARN = "⚠"


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


@dataclass(frozen=True)
class ReportRenderer:
    """How a modality renders its validation report (``Modality.report_renderer``).

    Attributes:
        model_card: ``(report, meta) -> Markdown``, plots linked as the PNG files beside it.
        render_html: ``(report, meta, images) -> HTML``: one self-contained page, plots inline.
        render_plots: ``(report, out_dir) -> {file name: path}``: the PNG plots written.
    """

    model_card: Callable[[Mapping[str, Any], Mapping[str, Any]], str]
    render_html: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, str | bytes | Path] | None], str]
    render_plots: Callable[[Mapping[str, Any], Path], dict[str, Path]]


def report_modality(report: Mapping[str, Any]) -> str:
    """The modality that built ``report`` (its ``modality`` key); a report from before that key:
    ``images`` for a multi-class report, else ``tabular``."""
    if report.get("modality"):
        return str(report["modality"])
    return "images" if is_multiclass(report) else "tabular"


def is_multiclass(report: Mapping[str, Any]) -> bool:
    """Whether ``report`` is a multi-class report (``training.imaging.validation``)."""
    return report.get("task") == "multiclass"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays, without importing NumPy here
        return obj.tolist()
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serialisable")


def canonical_json(report: Mapping[str, Any]) -> bytes:
    """The report as canonical JSON bytes (sorted keys, no whitespace, ASCII); NaN/inf raise ValueError.

    Same text as ``training.validation_cells.report_hash`` hashes, so both hashes agree.
    """
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.encode("utf-8")


def report_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json`, i.e. of the bytes of ``report.json``."""
    return hashlib.sha256(canonical_json(report)).hexdigest()


def finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def num_text(x: Any, digits: int = 3) -> str:
    value = finite(x)
    return NA if value is None else f"{value:.{digits}f}"


def int_text(x: Any) -> str:
    value = finite(x)
    return NA if value is None else f"{int(round(value)):,}"


def pct_text(x: Any, digits: int = 1) -> str:
    value = finite(x)
    return NA if value is None else f"{100 * value:.{digits}f}%"


def ci_text(ci: Any, digits: int = 3) -> str:
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return NA
    lo, hi = finite(ci[0]), finite(ci[1])
    return NA if lo is None or hi is None else f"{lo:.{digits}f}–{hi:.{digits}f}"


def text_or_na(x: Any) -> str:
    return NA if x is None or x == "" else str(x)


def group_title(key: str) -> str:
    return {"age_band": "Age band", "sex": "Sex", "hospital": "Hospital"}.get(key, key.replace("_", " ").capitalize())


def _privacy_text(meta: Mapping[str, Any]) -> str:
    privacy = meta.get("privacy") or {}
    eps, delta = finite(privacy.get("epsilon")), finite(privacy.get("delta"))
    if eps is None and delta is None:
        return NA
    text = f"ε = {num_text(eps, 2)}, δ = {NA if delta is None else f'{delta:.0e}'}"
    if privacy.get("accountant"):
        text += f" ({privacy['accountant']} accountant)"
    return text


def model_details(meta: Mapping[str, Any], hospitals: Sequence[Any], training: str) -> list[tuple[str, str]]:
    """The first rows of the card's "Model details" (every modality's card)."""
    kind = meta.get("model_kind") or meta.get("kind")
    hparams = meta.get("hparams") or {}
    return [
        ("Name", text_or_na(meta.get("model_name"))),
        ("Version", text_or_na(meta.get("version"))),
        ("Created", text_or_na(meta.get("created"))),
        ("Model", text_or_na(kind) + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(hparams.items())) + ")" if hparams else "")),
        ("Training", training),
        ("Strategy", text_or_na(meta.get("strategy"))),
        ("Rounds", text_or_na(meta.get("rounds"))),
        ("Hospitals", f"{len(hospitals)}: {', '.join(map(str, hospitals))}" if hospitals else NA),
        ("Privacy", _privacy_text(meta)),
    ]


def card_provenance(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``title``, ``provenance`` rows, ``fingerprints`` and ``sha256`` (every modality's card)."""
    fingerprints = meta.get("schema_fingerprints") or {}
    provenance = [
        ("Experiment", text_or_na(meta.get("experiment"))),
        ("Run id", text_or_na(meta.get("run_id"))),
        ("Code version", text_or_na(meta.get("code_version"))),
        ("Report SHA-256", report_sha256(report)),
    ]
    return {
        "title": f"{text_or_na(meta.get('model_name'))} v{text_or_na(meta.get('version'))}",
        "provenance": provenance,
        "fingerprints": [(str(h), text_or_na(f)) for h, f in sorted(fingerprints.items())],
        "sha256": provenance[-1][1],
    }


def subgroup_tables(
    subgroups: Mapping[str, Mapping[str, Any]],
    overall: Mapping[str, Any],
    cell_flags: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]],
    row: Callable[[str, Mapping[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The card's subgroup tables ``[{"title", "key", "rows"}]`` and the flagged cells ("group=value: flags").

    ``cell_flags(cell, overall)`` gives a cell's flags; ``row(label, cell)`` its table row, less ``name``
    and ``flags`` (added here), and may note the cell in the caller's lists (every modality's card).
    """
    groups = []
    flagged: list[str] = []
    for group, cells in subgroups.items():
        rows = []
        for name, cell in cells.items():
            label = f"{group}={name}"
            flags = cell_flags(cell, overall)
            if flags:
                flagged.append(f"{label}: {'; '.join(flags)}")
            rows.append({"name": str(name), **row(label, cell), "flags": flags})
        groups.append({"title": group_title(group), "key": group, "rows": rows})
    return groups, flagged


def decision_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Metrics rows for the served decision rule (report ``decision``, docs/imbalance.md):
    the threshold, how it was chosen, and sensitivity/specificity at it on the held-out test data."""
    decision: Mapping[str, Any] = report.get("decision") or {}
    if not decision:
        return []
    rule, source = str(decision.get("rule")), str(decision.get("source") or "")
    how = {"youden": "Youden's J (max sensitivity + specificity - 1)", "fixed": "fixed in the spec",
           "sensitivity": f"highest threshold with sensitivity >= {num_text(decision.get('target'), 2)}"}.get(rule, source)
    val = decision.get("val") or {}
    if val:
        how += f"; chosen on the val part (n={int_text(val.get('n'))}, sensitivity {num_text(val.get('sensitivity'))}, " \
               f"specificity {num_text(val.get('specificity'))})"
    elif rule == "prior":
        how = f"{source}: the class prior the model was trained under"
    if decision.get("threshold") is None:
        scale = ", ".join(num_text(s, 3) for s in decision.get("class_scale") or [])
        served: Mapping[str, Any] = decision.get("test") or {}
        return [("Decision rule", "prior-corrected argmax", f"{how}; class scale [{scale}]")] + ([
            ("Balanced accuracy (served labels)", num_text(served.get("balanced_accuracy")), "held-out test data, prior-corrected"),
            ("Accuracy (served labels)", num_text(served.get("accuracy")), "held-out test data, prior-corrected"),
        ] if served else [])
    test: Mapping[str, Any] = decision.get("test") or {}
    return [
        ("Decision threshold", num_text(decision.get("threshold"), 4), how),
        ("Sensitivity at threshold", num_text(test.get("sensitivity")), "held-out test data"),
        ("Specificity at threshold", num_text(test.get("specificity")), "held-out test data"),
        ("Balanced accuracy at threshold", num_text(test.get("balanced_accuracy")), "held-out test data"),
    ]


def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell or paragraph: no raw HTML tags, no cell breaks."""
    return _TAG_START.sub("&lt;", str(text)).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines + [""]


def markdown_card(
    c: Mapping[str, Any],
    *,
    mix_columns: Sequence[str],
    mix_row: Callable[[Mapping[str, Any]], Sequence[Any]],
    results: Sequence[str],
    subgroup_columns: Sequence[str],
    subgroup_row: Callable[[Mapping[str, Any]], Sequence[Any]],
) -> str:
    """The model card's Markdown from a card's content (every modality's card).

    What differs between cards is passed in: the population mix columns after "n" and "share"
    (``mix_row`` gives their cells), the ``results`` lines after the metrics table (plots included)
    and the subgroup table's columns between the group's name and the flag.
    """
    out = [f"# Model card: {md_escape(c['title'])}", ""]
    out += ["## Model details", ""] + md_table(["Field", "Value"], c["details"])
    out += ["## Intended use", "", md_escape(c["intended_use"]), ""]
    out += ["## Out-of-scope use", "", md_escape(c["out_of_scope"]), ""]
    out += ["## Population", "", md_escape(c["population"]["summary"]), ""]
    for mix in c["population"]["mixes"]:
        out += [f"**{md_escape(mix['title'])}**", ""]
        out += md_table([mix["title"], "n", "share", *mix_columns], [[r["name"], r["n"], r["share"], *mix_row(r)] for r in mix["rows"]])
    out += ["## Metrics", ""] + md_table(["Metric", "Value", "Note"], c["metrics"])
    out += results
    out += ["## Subgroups", "", md_escape(f"{WARN} flags a subgroup whose {c['flag_rule']}"), ""]
    for group in c["groups"]:
        out += [f"### {md_escape(group['title'])}", ""]
        out += md_table(
            [group["title"], *subgroup_columns, "Flag"],
            [[r["name"], *subgroup_row(r), (WARN + " " + "; ".join(r["flags"])) if r["flags"] else ""] for r in group["rows"]],
        )
    out += ["## Caveats", ""] + ([f"- {md_escape(x)}" for x in c["caveats"]] or ["- None recorded."]) + [""]
    out += ["## Provenance", ""] + md_table(["Field", "Value"], c["provenance"])
    if c["fingerprints"]:
        out += ["**Schema fingerprints**", ""] + md_table(["Hospital", "Fingerprint"], c["fingerprints"])
    return "\n".join(out)
