"""The multi-class image model's validation report: model card (Markdown) and HTML page."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.report_page import page_source, render_page
from training.report_render import (
    AUROC_DROP_FLAG,
    NA,
    SMALL_EVENTS,
    SMALL_N,
    WARN,
    card_provenance,
    ci_text,
    decision_rows,
    finite,
    group_title,
    int_text,
    markdown_card,
    md_table,
    model_details,
    num_text,
    pct_text,
    subgroup_tables,
    text_or_na,
)

__all__ = [
    "BALANCED_ACCURACY_DROP_FLAG",
    "DEFAULT_MULTICLASS_INTENDED_USE",
    "DEFAULT_MULTICLASS_OUT_OF_SCOPE",
    "ECE_FLAG",
    "ECE_RISE_FLAG",
    "MULTICLASS_PLOT_TITLES",
    "class_cells",
    "multiclass_model_card",
    "render_multiclass_html",
]


#: A subgroup is flagged when its macro AUROC is more than AUROC_DROP_FLAG below the overall, its
#: balanced accuracy more than this below the overall, ...
BALANCED_ACCURACY_DROP_FLAG = 0.05
#: ... or its top-label expected calibration error is above ECE_FLAG and more than ECE_RISE_FLAG above
#: the overall (the overall ECE is flagged on its own when above ECE_FLAG).
ECE_FLAG = 0.10
ECE_RISE_FLAG = 0.05
DEFAULT_MULTICLASS_INTENDED_USE = (
    "Decision support for clinicians: suggests which of the model's classes ({classes}) an image most likely shows, "
    "with a probability for each class, for images acquired like those of the participating hospitals. It informs, "
    "and never replaces, the reading of the image by a qualified clinician; it is not a diagnosis."
)


DEFAULT_MULTICLASS_OUT_OF_SCOPE = (
    "Use as the only reader of an image, or screening without a clinician; findings outside the model's classes (an "
    "image that shows none of them still gets one of them); other modalities, body regions, resolutions or devices "
    "than those it was trained and validated on; patients of hospitals that did not take part, until the model has "
    "been validated there; withholding care because of a predicted class."
)


MULTICLASS_PLOT_TITLES = {
    "roc": "ROC curves (one-vs-rest)",
    "confusion": "Confusion matrix",
    "calibration": "Calibration (top-label)",
}


_CM_RGB = (0, 114, 178)  # Okabe-Ito blue, the confusion matrix's shading


def _cell_flags(cell: Mapping[str, Any], overall: Mapping[str, Any]) -> list[str]:
    flags = []
    auroc, ref = finite(cell.get("auroc")), finite(overall.get("auroc"))
    if auroc is not None and ref is not None and auroc < ref - AUROC_DROP_FLAG:
        flags.append(f"macro AUROC {ref - auroc:.3f} below overall")
    bacc, ref = finite(cell.get("balanced_accuracy")), finite(overall.get("balanced_accuracy"))
    if bacc is not None and ref is not None and bacc < ref - BALANCED_ACCURACY_DROP_FLAG:
        flags.append(f"balanced accuracy {ref - bacc:.3f} below overall")
    ece, ref = finite(cell.get("ece")), finite(overall.get("ece"))
    if ece is not None and ece > ECE_FLAG and (ref is None or ece > ref + ECE_RISE_FLAG):
        flags.append(f"ECE {ece:.3f}" + (f", {ece - ref:.3f} above overall" if ref is not None else f" above {ECE_FLAG:.2f}"))
    return flags


def class_cells(cell: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """A report cell's metrics per class (``per_class``), empty when it has none."""
    return cell.get("per_class") or {}


def _auroc_text(m: Mapping[str, Any]) -> str:
    auroc, ci = num_text(m.get("auroc")), ci_text(m.get("auroc_ci95"))
    return auroc if auroc == NA or ci == NA else f"{auroc} ({ci})"


def _share(part: Any, whole: Any) -> float | None:
    part, whole = finite(part), finite(whole)
    return part / whole if part is not None and whole else None


def _confusion(report: Mapping[str, Any], classes: list[str]) -> list[dict[str, Any]]:
    """Rows of the overall confusion matrix: counts, shares of the true class and a cell shade."""
    matrix = (report.get("overall") or {}).get("confusion") or []
    rows = []
    for i, (name, counts) in enumerate(zip(classes, matrix)):
        total = sum(int(v) for v in counts)
        cells = []
        for j, v in enumerate(counts):
            share = _share(v, total)
            alpha = round(0.08 + 0.87 * share, 3) if share else 0.0
            cells.append({"count": int_text(v), "share": pct_text(share, 0), "diagonal": i == j,
                          "style": f"background: rgba({_CM_RGB[0]}, {_CM_RGB[1]}, {_CM_RGB[2]}, {alpha});"
                                   + (" color: #ffffff;" if alpha > 0.55 else "")})
        rows.append({"name": name, "cells": cells, "n": int_text(total)})
    return rows


def _card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    overall: Mapping[str, Any] = report.get("overall") or {}
    subgroups: Mapping[str, Mapping[str, Any]] = report.get("subgroups") or {}
    classes = [str(c) for c in report.get("classes") or list(class_cells(overall))]
    hospitals = list(meta.get("hospitals") or report.get("hospitals") or [])
    unit = str(meta.get("unit") or "images")
    n_total = finite(overall.get("n"))
    private = bool(meta.get("privacy"))

    training = "Federated learning with DP-SGD (differentially private SGD at each hospital)" if private else "Federated learning"
    details = model_details(meta, hospitals, training) + [
        ("Task", f"Multi-class classification into {len(classes)} classes: {', '.join(classes)}" if classes else NA),
        ("Label column", text_or_na(meta.get("label"))) if meta.get("label") else None,
        ("Input", text_or_na(meta.get("input")) if meta.get("input") else ", ".join(map(str, meta.get("features") or [])) or NA),
    ]

    def class_mix(cell: Mapping[str, Any]) -> list[str]:
        return [pct_text(_share(class_cells(cell).get(c, {}).get("support"), cell.get("n"))) for c in classes]

    mixes = []
    for group, cells in subgroups.items():
        rows = [{"name": str(name), "n": int_text(cell.get("n")), "share": pct_text(_share(cell.get("n"), n_total)),
                 "classes": class_mix(cell)} for name, cell in cells.items()]
        if rows:
            mixes.append({"title": group_title(group), "rows": rows})
    support = ", ".join(f"{c} {int_text(class_cells(overall).get(c, {}).get('support'))} ({share})" for c, share in zip(classes, class_mix(overall)))
    population = {
        "summary": f"{int_text(overall.get('n'))} {unit} from {len(report.get('hospitals') or hospitals)} hospitals. Class mix: {support or NA}.",
        "mixes": mixes,
    }

    k = len(classes)
    ece_note = f"{WARN} above {ECE_FLAG:.2f}" if (finite(overall.get("ece")) or 0.0) > ECE_FLAG else "top-label, 10 bins; lower is better"
    metrics = [
        (f"{unit.capitalize()} (n)", int_text(overall.get("n")), ""),
        ("Accuracy", num_text(overall.get("accuracy")), "share whose most probable class is the true class"),
        ("Balanced accuracy", num_text(overall.get("balanced_accuracy")), f"mean sensitivity over classes; chance {1 / k:.3f}" if k else ""),
        ("Macro AUROC (95% CI)", _auroc_text(overall), "one-vs-rest, mean over classes; conservative interval"),
        ("Log loss", num_text(overall.get("log_loss"), 4), f"lower is better; uniform guess {math.log(k):.3f}" if k else "lower is better"),
        ("Brier score", num_text(overall.get("brier"), 4), "multi-class (sum over classes, 0–2); lower is better"),
        ("ECE", num_text(overall.get("ece"), 4), ece_note),
        *decision_rows(report),
    ]
    per_class = [
        {"name": c, "support": int_text(m.get("support")), "prevalence": pct_text(m.get("prevalence")), "auroc": _auroc_text(m),
         "sensitivity": num_text(m.get("sensitivity")), "specificity": num_text(m.get("specificity")), "ppv": num_text(m.get("ppv")),
         "npv": num_text(m.get("npv")), "f1": num_text(m.get("f1"))}
        for c, m in ((c, class_cells(overall).get(c) or {}) for c in classes)
    ]

    small: list[str] = []
    undefined: list[str] = []
    partial: list[str] = []

    def row(label: str, cell: Mapping[str, Any]) -> dict[str, Any]:
        supports = [finite(class_cells(cell).get(c, {}).get("support")) or 0 for c in classes]
        n = finite(cell.get("n"))
        if (n is not None and n < SMALL_N) or (supports and min(supports) < SMALL_EVENTS):
            small.append(f"{label} (n={int_text(n)}, smallest class={int_text(min(supports) if supports else None)})")
        with_auroc = sum(finite(class_cells(cell).get(c, {}).get("auroc")) is not None for c in classes)
        if with_auroc == 0:
            undefined.append(label)
        elif with_auroc < k:
            partial.append(f"{label} ({with_auroc} of {k})")
        return {"n": int_text(n), "accuracy": num_text(cell.get("accuracy")), "balanced_accuracy": num_text(cell.get("balanced_accuracy")),
                "auroc": _auroc_text(cell), "ece": num_text(cell.get("ece")), "brier": num_text(cell.get("brier"), 4)}

    groups, flagged = subgroup_tables(subgroups, overall, _cell_flags, row)

    caveats = [str(c) for c in meta.get("caveats") or []]
    declared = [str(c) for c in meta.get("classes") or []]
    if declared and declared != classes:
        caveats.append(f"The model's declared classes ({', '.join(declared)}) differ from the report's ({', '.join(classes)}).")
    absent = [c for c in classes if not finite(class_cells(overall).get(c, {}).get("support"))]
    if absent:
        caveats.append(f"No validation {unit} of class {', '.join(absent)}: its sensitivity and AUROC are not computable, and the macro AUROC leaves it out.")
    rare = [c for c in classes if 0 < (finite(class_cells(overall).get(c, {}).get("support")) or 0) < SMALL_EVENTS]
    if rare:
        caveats.append(f"Fewer than {SMALL_EVENTS} validation {unit} of class {', '.join(rare)}: its metrics are imprecise.")
    suppressed = [str(s) for s in report.get("suppressed") or []]
    if suppressed:
        caveats.append(f"{len(suppressed)} subgroup cell(s) not reported (too few {unit}): {', '.join(suppressed)}.")
    if small:
        caveats.append(f"Small subgroups (fewer than {SMALL_N} {unit} or {SMALL_EVENTS} of some class); their estimates are imprecise: {', '.join(small)}.")
    if (finite(overall.get("ece")) or 0.0) > ECE_FLAG:
        caveats.append(f"Overall top-label ECE {num_text(overall.get('ece'))}: the stated probabilities are not reliable; consider recalibration (e.g. temperature scaling) before use.")
    if flagged:
        caveats.append(f"Subgroups with worse discrimination or calibration ({WARN}): {'; '.join(flagged)}.")
    if partial:
        caveats.append(f"Macro AUROC over fewer classes (a class absent from the subgroup): {', '.join(partial)}.")
    if undefined:
        caveats.append(f"AUROC not computable (a single class) for: {', '.join(undefined)}.")

    return {
        **card_provenance(report, meta),
        "details": [d for d in details if d is not None],
        "intended_use": text_or_na(meta.get("intended_use") or DEFAULT_MULTICLASS_INTENDED_USE.format(classes=", ".join(classes))),
        "out_of_scope": text_or_na(meta.get("out_of_scope") or DEFAULT_MULTICLASS_OUT_OF_SCOPE),
        "unit": unit,
        "classes": classes,
        "population": population,
        "metrics": metrics,
        "per_class": per_class,
        "confusion": _confusion(report, classes),
        "groups": groups,
        "caveats": caveats,
        "flag_rule": (f"macro AUROC is more than {AUROC_DROP_FLAG} below the overall, whose balanced accuracy is more than "
                      f"{BALANCED_ACCURACY_DROP_FLAG} below the overall, or whose top-label ECE is above {ECE_FLAG:.2f} and more "
                      f"than {ECE_RISE_FLAG} above the overall."),
    }


def multiclass_model_card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The multi-class model card as Markdown (plots linked as the PNG files written beside it)."""
    c = _card(report, meta)
    results = ["## Per class", "", "One-vs-rest; sensitivity, specificity, PPV, NPV and F1 at the predicted (most probable) class.", ""]
    results += md_table(["Class", "Support", "Prevalence", "AUROC (95% CI)", "Sensitivity", "Specificity", "PPV", "NPV", "F1"],
                         [[r["name"], r["support"], r["prevalence"], r["auroc"], r["sensitivity"], r["specificity"], r["ppv"], r["npv"], r["f1"]] for r in c["per_class"]])
    results += ["## Confusion matrix", "", "Rows: true class; columns: predicted class; count (share of the true class).", ""]
    results += md_table(["True \\ predicted", *c["classes"], "n"],
                         [[r["name"], *(f"{x['count']} ({x['share']})" for x in r["cells"]), r["n"]] for r in c["confusion"]])
    results += ["![ROC curves (one-vs-rest)](roc.png)", "![Confusion matrix](confusion.png)", "![Calibration (top-label)](calibration.png)", ""]
    return markdown_card(
        c,
        mix_columns=c["classes"],
        mix_row=lambda r: r["classes"],
        results=results,
        subgroup_columns=["n", "Accuracy", "Balanced accuracy", "Macro AUROC (95% CI)", "ECE", "Brier"],
        subgroup_row=lambda r: [r["n"], r["accuracy"], r["balanced_accuracy"], r["auroc"], r["ece"], r["brier"]],
    )


_HTML = page_source(
    css="""table.cm td.num { min-width: 84px; text-align: center; }
table.cm td.diag { font-weight: 600; outline: 2px solid #1f2328; outline-offset: -2px; }
table.cm .pct { display: block; font-size: 1rem; }
table.cm .cnt { display: block; font-size: 0.75rem; opacity: 0.85; }
table.cm th.corner { font-weight: 500; color: var(--muted); font-size: 0.8rem; }
table.sg td, table.sg th { white-space: nowrap; }
table.sg td.flags { white-space: normal; }
""",
    subtitle="Model card and clinical validation of a registered model version (multi-class).",
    population="""<p class="sub">Share of each class within each subgroup.</p>
<div class="figs">
{% for mix in c.population.mixes %}<table>
<tr><th>{{ mix.title }}</th><th class="num">n</th><th class="num">share</th>{% for k in c.classes %}<th class="num">{{ k }}</th>{% endfor %}</tr>
{% for r in mix.rows %}<tr><td>{{ r.name }}</td><td class="num">{{ r.n }}</td><td class="num">{{ r.share }}</td>{% for x in r.classes %}<td class="num">{{ x }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}</div>
""",
    results=r"""
<h3>Per class</h3>
<p class="sub">One-vs-rest. Sensitivity, specificity, PPV, NPV and F1 at the predicted (most probable) class.</p>
<table>
<tr><th>Class</th><th class="num">Support</th><th class="num">Prevalence</th><th class="num">AUROC (95% CI)</th><th class="num">Sensitivity</th><th class="num">Specificity</th><th class="num">PPV</th><th class="num">NPV</th><th class="num">F1</th></tr>
{% for r in c.per_class %}<tr><td>{{ r.name }}</td><td class="num">{{ r.support }}</td><td class="num">{{ r.prevalence }}</td><td class="num">{{ r.auroc }}</td><td class="num">{{ r.sensitivity }}</td><td class="num">{{ r.specificity }}</td><td class="num">{{ r.ppv }}</td><td class="num">{{ r.npv }}</td><td class="num">{{ r.f1 }}</td></tr>
{% endfor %}</table>

<h3>Confusion matrix</h3>
<p class="sub">Rows: true class; columns: predicted class. Share of the true class, with the count below it.</p>
<table class="cm">
<tr><th class="corner">true \ predicted</th>{% for k in c.classes %}<th class="num">{{ k }}</th>{% endfor %}<th class="num">n</th></tr>
{% for r in c.confusion %}<tr><th>{{ r.name }}</th>{% for x in r.cells %}<td class="num{{ ' diag' if x.diagonal else '' }}" style="{{ x.style }}"><span class="pct">{{ x.share }}</span><span class="cnt">{{ x.count }}</span></td>{% endfor %}<td class="num">{{ r.n }}</td></tr>
{% endfor %}</table>
""",
    subgroup_table="""<table class="sg">
<tr><th>{{ g.title }}</th><th class="num">n</th><th class="num">Accuracy</th><th class="num">Balanced accuracy</th><th class="num">Macro AUROC (95% CI)</th><th class="num">ECE</th><th class="num">Brier</th><th>Flag</th></tr>
{% for r in g.rows %}<tr class="{{ 'flagged' if r.flags else '' }}"><td>{{ r.name }}</td><td class="num">{{ r.n }}</td><td class="num">{{ r.accuracy }}</td><td class="num">{{ r.balanced_accuracy }}</td><td class="num">{{ r.auroc }}</td><td class="num">{{ r.ece }}</td><td class="num">{{ r.brier }}</td><td class="flags">{% for f in r.flags %}<span class="badge warn">⚠ {{ f }}</span> {% endfor %}</td></tr>
{% endfor %}</table>
""",
)


def render_multiclass_html(report: Mapping[str, Any], meta: Mapping[str, Any],
                           images: Mapping[str, str | bytes | Path] | None = None) -> str:
    """One self-contained HTML page for a multi-class report (see ``experiments.report.render_html``).

    Known plots come first, in the order ROC, confusion matrix, calibration; other names follow.
    """
    return render_page(_HTML, _card, MULTICLASS_PLOT_TITLES, report, meta, images)
