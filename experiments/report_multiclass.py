"""Multi-class validation report (``training.imaging.validation``): plots, model card, HTML.

Reached through :mod:`experiments.report` (``render_plots``, ``model_card``, ``render_html``,
``write_report_artifacts``) when ``report["task"] == "multiclass"``; same canonical JSON and
SHA-256, same page style, same conventions (``None`` renders as "n/a", text is escaped).

* ``roc.png``: one one-vs-rest ROC curve per class;
* ``confusion.png``: the confusion matrix normalised by true class, with counts;
* ``calibration.png``: top-label reliability diagram (confidence of the predicted class against
  the share of correct predictions), per hospital beside the overall;
* ``model_card.md`` and ``report.html``: per-class table, confusion matrix and subgroup tables
  (hospital and any other group) with accuracy, macro AUROC, ECE and flags.

``meta`` as in :mod:`experiments.report`, plus ``classes`` (checked against the report's),
``input`` (e.g. "28x28 greyscale chest X-ray") or ``features``, and ``unit`` (what is counted;
default "images"). ``label`` describes what the classes are (optional).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.report import (
    AUROC_DROP_FLAG,
    FIG_SIZE,
    MIN_BIN_N_HOSPITAL,
    NA,
    OVERALL_COLOUR,
    SMALL_EVENTS,
    SMALL_N,
    WARN,
    _arr,
    _card_provenance,
    _ci,
    _finite,
    _group_title,
    _hospital_cells,
    _int,
    _markdown_card,
    _md_table,
    _model_details,
    _new_axes,
    _no_data,
    _num,
    _page,
    _pct,
    _plot_roc_curves,
    _render_page,
    _save,
    _style,
    _subgroup_tables,
    _text,
    decision_rows,
)

__all__ = [
    "BALANCED_ACCURACY_DROP_FLAG",
    "DEFAULT_MULTICLASS_INTENDED_USE",
    "DEFAULT_MULTICLASS_OUT_OF_SCOPE",
    "ECE_FLAG",
    "ECE_RISE_FLAG",
    "MULTICLASS_PLOT_TITLES",
    "multiclass_model_card",
    "render_multiclass_html",
    "render_multiclass_plots",
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


# ---------------------------------------------------------------- the card's content


def _cell_flags(cell: Mapping[str, Any], overall: Mapping[str, Any]) -> list[str]:
    flags = []
    auroc, ref = _finite(cell.get("auroc")), _finite(overall.get("auroc"))
    if auroc is not None and ref is not None and auroc < ref - AUROC_DROP_FLAG:
        flags.append(f"macro AUROC {ref - auroc:.3f} below overall")
    bacc, ref = _finite(cell.get("balanced_accuracy")), _finite(overall.get("balanced_accuracy"))
    if bacc is not None and ref is not None and bacc < ref - BALANCED_ACCURACY_DROP_FLAG:
        flags.append(f"balanced accuracy {ref - bacc:.3f} below overall")
    ece, ref = _finite(cell.get("ece")), _finite(overall.get("ece"))
    if ece is not None and ece > ECE_FLAG and (ref is None or ece > ref + ECE_RISE_FLAG):
        flags.append(f"ECE {ece:.3f}" + (f", {ece - ref:.3f} above overall" if ref is not None else f" above {ECE_FLAG:.2f}"))
    return flags


def _per_class(cell: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    return cell.get("per_class") or {}


def _auroc_text(m: Mapping[str, Any]) -> str:
    auroc, ci = _num(m.get("auroc")), _ci(m.get("auroc_ci95"))
    return auroc if auroc == NA or ci == NA else f"{auroc} ({ci})"


def _share(part: Any, whole: Any) -> float | None:
    part, whole = _finite(part), _finite(whole)
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
            cells.append({"count": _int(v), "share": _pct(share, 0), "diagonal": i == j,
                          "style": f"background: rgba({_CM_RGB[0]}, {_CM_RGB[1]}, {_CM_RGB[2]}, {alpha});"
                                   + (" color: #ffffff;" if alpha > 0.55 else "")})
        rows.append({"name": name, "cells": cells, "n": _int(total)})
    return rows


def _card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    overall: Mapping[str, Any] = report.get("overall") or {}
    subgroups: Mapping[str, Mapping[str, Any]] = report.get("subgroups") or {}
    classes = [str(c) for c in report.get("classes") or list(_per_class(overall))]
    hospitals = list(meta.get("hospitals") or report.get("hospitals") or [])
    unit = str(meta.get("unit") or "images")
    n_total = _finite(overall.get("n"))
    private = bool(meta.get("privacy"))

    training = "Federated learning with DP-SGD (differentially private SGD at each hospital)" if private else "Federated learning"
    details = _model_details(meta, hospitals, training) + [
        ("Task", f"Multi-class classification into {len(classes)} classes: {', '.join(classes)}" if classes else NA),
        ("Label column", _text(meta.get("label"))) if meta.get("label") else None,
        ("Input", _text(meta.get("input")) if meta.get("input") else ", ".join(map(str, meta.get("features") or [])) or NA),
    ]

    def class_mix(cell: Mapping[str, Any]) -> list[str]:
        return [_pct(_share(_per_class(cell).get(c, {}).get("support"), cell.get("n"))) for c in classes]

    mixes = []
    for group, cells in subgroups.items():
        rows = [{"name": str(name), "n": _int(cell.get("n")), "share": _pct(_share(cell.get("n"), n_total)),
                 "classes": class_mix(cell)} for name, cell in cells.items()]
        if rows:
            mixes.append({"title": _group_title(group), "rows": rows})
    support = ", ".join(f"{c} {_int(_per_class(overall).get(c, {}).get('support'))} ({share})" for c, share in zip(classes, class_mix(overall)))
    population = {
        "summary": f"{_int(overall.get('n'))} {unit} from {len(report.get('hospitals') or hospitals)} hospitals. Class mix: {support or NA}.",
        "mixes": mixes,
    }

    k = len(classes)
    ece_note = f"{WARN} above {ECE_FLAG:.2f}" if (_finite(overall.get("ece")) or 0.0) > ECE_FLAG else "top-label, 10 bins; lower is better"
    metrics = [
        (f"{unit.capitalize()} (n)", _int(overall.get("n")), ""),
        ("Accuracy", _num(overall.get("accuracy")), "share whose most probable class is the true class"),
        ("Balanced accuracy", _num(overall.get("balanced_accuracy")), f"mean sensitivity over classes; chance {1 / k:.3f}" if k else ""),
        ("Macro AUROC (95% CI)", _auroc_text(overall), "one-vs-rest, mean over classes; conservative interval"),
        ("Log loss", _num(overall.get("log_loss"), 4), f"lower is better; uniform guess {math.log(k):.3f}" if k else "lower is better"),
        ("Brier score", _num(overall.get("brier"), 4), "multi-class (sum over classes, 0–2); lower is better"),
        ("ECE", _num(overall.get("ece"), 4), ece_note),
        *decision_rows(report),
    ]
    per_class = [
        {"name": c, "support": _int(m.get("support")), "prevalence": _pct(m.get("prevalence")), "auroc": _auroc_text(m),
         "sensitivity": _num(m.get("sensitivity")), "specificity": _num(m.get("specificity")), "ppv": _num(m.get("ppv")),
         "npv": _num(m.get("npv")), "f1": _num(m.get("f1"))}
        for c, m in ((c, _per_class(overall).get(c) or {}) for c in classes)
    ]

    small: list[str] = []
    undefined: list[str] = []
    partial: list[str] = []

    def row(label: str, cell: Mapping[str, Any]) -> dict[str, Any]:
        supports = [_finite(_per_class(cell).get(c, {}).get("support")) or 0 for c in classes]
        n = _finite(cell.get("n"))
        if (n is not None and n < SMALL_N) or (supports and min(supports) < SMALL_EVENTS):
            small.append(f"{label} (n={_int(n)}, smallest class={_int(min(supports) if supports else None)})")
        with_auroc = sum(_finite(_per_class(cell).get(c, {}).get("auroc")) is not None for c in classes)
        if with_auroc == 0:
            undefined.append(label)
        elif with_auroc < k:
            partial.append(f"{label} ({with_auroc} of {k})")
        return {"n": _int(n), "accuracy": _num(cell.get("accuracy")), "balanced_accuracy": _num(cell.get("balanced_accuracy")),
                "auroc": _auroc_text(cell), "ece": _num(cell.get("ece")), "brier": _num(cell.get("brier"), 4)}

    groups, flagged = _subgroup_tables(subgroups, overall, _cell_flags, row)

    caveats = [str(c) for c in meta.get("caveats") or []]
    declared = [str(c) for c in meta.get("classes") or []]
    if declared and declared != classes:
        caveats.append(f"The model's declared classes ({', '.join(declared)}) differ from the report's ({', '.join(classes)}).")
    absent = [c for c in classes if not _finite(_per_class(overall).get(c, {}).get("support"))]
    if absent:
        caveats.append(f"No validation {unit} of class {', '.join(absent)}: its sensitivity and AUROC are not computable, and the macro AUROC leaves it out.")
    rare = [c for c in classes if 0 < (_finite(_per_class(overall).get(c, {}).get("support")) or 0) < SMALL_EVENTS]
    if rare:
        caveats.append(f"Fewer than {SMALL_EVENTS} validation {unit} of class {', '.join(rare)}: its metrics are imprecise.")
    suppressed = [str(s) for s in report.get("suppressed") or []]
    if suppressed:
        caveats.append(f"{len(suppressed)} subgroup cell(s) not reported (too few {unit}): {', '.join(suppressed)}.")
    if small:
        caveats.append(f"Small subgroups (fewer than {SMALL_N} {unit} or {SMALL_EVENTS} of some class); their estimates are imprecise: {', '.join(small)}.")
    if (_finite(overall.get("ece")) or 0.0) > ECE_FLAG:
        caveats.append(f"Overall top-label ECE {_num(overall.get('ece'))}: the stated probabilities are not reliable; consider recalibration (e.g. temperature scaling) before use.")
    if flagged:
        caveats.append(f"Subgroups with worse discrimination or calibration ({WARN}): {'; '.join(flagged)}.")
    if partial:
        caveats.append(f"Macro AUROC over fewer classes (a class absent from the subgroup): {', '.join(partial)}.")
    if undefined:
        caveats.append(f"AUROC not computable (a single class) for: {', '.join(undefined)}.")

    return {
        **_card_provenance(report, meta),
        "details": [d for d in details if d is not None],
        "intended_use": _text(meta.get("intended_use") or DEFAULT_MULTICLASS_INTENDED_USE.format(classes=", ".join(classes))),
        "out_of_scope": _text(meta.get("out_of_scope") or DEFAULT_MULTICLASS_OUT_OF_SCOPE),
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


# ---------------------------------------------------------------- Markdown model card


def multiclass_model_card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The multi-class model card as Markdown (plots linked as the PNG files written beside it)."""
    c = _card(report, meta)
    results = ["## Per class", "", "One-vs-rest; sensitivity, specificity, PPV, NPV and F1 at the predicted (most probable) class.", ""]
    results += _md_table(["Class", "Support", "Prevalence", "AUROC (95% CI)", "Sensitivity", "Specificity", "PPV", "NPV", "F1"],
                         [[r["name"], r["support"], r["prevalence"], r["auroc"], r["sensitivity"], r["specificity"], r["ppv"], r["npv"], r["f1"]] for r in c["per_class"]])
    results += ["## Confusion matrix", "", "Rows: true class; columns: predicted class; count (share of the true class).", ""]
    results += _md_table(["True \\ predicted", *c["classes"], "n"],
                         [[r["name"], *(f"{x['count']} ({x['share']})" for x in r["cells"]), r["n"]] for r in c["confusion"]])
    results += ["![ROC curves (one-vs-rest)](roc.png)", "![Confusion matrix](confusion.png)", "![Calibration (top-label)](calibration.png)", ""]
    return _markdown_card(
        c,
        mix_columns=c["classes"],
        mix_row=lambda r: r["classes"],
        results=results,
        subgroup_columns=["n", "Accuracy", "Balanced accuracy", "Macro AUROC (95% CI)", "ECE", "Brier"],
        subgroup_row=lambda r: [r["n"], r["accuracy"], r["balanced_accuracy"], r["auroc"], r["ece"], r["brier"]],
    )


# ---------------------------------------------------------------- HTML page

_HTML = _page(
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
    results="""
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
    return _render_page(_HTML, _card, MULTICLASS_PLOT_TITLES, report, meta, images)


# ---------------------------------------------------------------- plots


def _classes(report: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in report.get("classes") or list(_per_class(report.get("overall") or {}))]


def _plot_roc(report: Mapping[str, Any], path: Path) -> Path:
    overall = report.get("overall") or {}

    def label(name: str, m: Mapping[str, Any]) -> str:
        ci = _ci(m.get("auroc_ci95"), 2)
        return f"{name} (n={_int(m.get('support'))}): {_num(m.get('auroc'))}" + (f" ({ci})" if ci != NA else "")

    per_class = [(name, _per_class(overall).get(name) or {}) for name in _classes(report)]
    curves = [(label(name, m), m.get("roc") or {}, {"linewidth": 1.6, **_style(i)}) for i, (name, m) in enumerate(per_class)]
    return _plot_roc_curves(f"ROC curves, one-vs-rest: macro AUROC {_num(overall.get('auroc'))}", curves, path,
                            legend={"title": "Class: AUROC (95% CI)", "title_fontsize": 7})


def _plot_confusion(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    classes = _classes(report)
    k = len(classes)
    overall = report.get("overall") or {}
    counts = np.asarray(overall.get("confusion") or np.zeros((0, 0)), dtype=float).reshape(k, k) if k else np.zeros((0, 0))
    fig, ax = _new_axes(f"Confusion matrix: accuracy {_pct(overall.get('accuracy'))}, balanced {_pct(overall.get('balanced_accuracy'))}")
    if k > 6:  # keep cells legible: grow the square figure with the number of classes
        fig.set_size_inches(max(FIG_SIZE[0], 0.75 * k + 2.5), max(FIG_SIZE[1], 0.62 * k + 1.8))
    ax.grid(False)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    cmap = LinearSegmentedColormap.from_list("bioverse", ["#ffffff", "#0072B2"])
    image = ax.imshow(shares, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
    size = 9 if k <= 4 else 8 if k <= 7 else 6.5
    for i in range(k):
        for j in range(k):
            colour = "#ffffff" if shares[i, j] > 0.55 else "#1f2328"
            text = f"{100 * shares[i, j]:.0f}%\n({int(counts[i, j]):,})" if totals[i, 0] > 0 else "–"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour, fontweight="bold" if i == j else "normal")
    long_names = max((len(c) for c in classes), default=0) > 8 or k > 5
    ax.set_xticks(range(k), classes, rotation=30 if long_names else 0, ha="right" if long_names else "center", fontsize=8)
    ax.set_yticks(range(k), [f"{c} (n={int(totals[i, 0]):,})" for i, c in enumerate(classes)], fontsize=8)
    ax.set(xlabel="Predicted class", ylabel="True class")
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Share of the true class", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bar.outline.set_visible(False)
    if not k or not counts.sum():
        _no_data(ax)
    return _save(fig, path)


def _plot_calibration(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    fig, ax = _new_axes(f"Top-label calibration: ECE {_num(overall.get('ece'))}")
    k = len(_classes(report))
    low = 1.0 / k if k else 0.0  # the confidence of the predicted class is at least 1/K

    def usable(cell: Mapping[str, Any], min_n: float) -> tuple[Any, Any, Any]:
        bins = [b for b in cell.get("calibration_curve") or []
                if _finite(b.get("accuracy")) is not None and (_finite(b.get("n")) or 0) >= min_n]
        return tuple(_arr([b.get(key) for b in bins]) for key in ("mean_confidence", "accuracy", "n"))  # type: ignore[return-value]

    for i, (h, cell) in enumerate(_hospital_cells(report)):
        x, y, _ = usable(cell, MIN_BIN_N_HOSPITAL)
        if len(x) >= 2:
            ax.plot(x, y, marker="o", markersize=2.5, linewidth=0.9, alpha=0.75, label=h, **_style(i))
            low = min(low, float(np.nanmin(x)), float(np.nanmin(y)))
    x, y, n = usable(overall, 1)
    above = False
    if len(x):
        ax.plot(x, y, color=OVERALL_COLOUR, linewidth=1.4, zorder=5)
        ax.scatter(x, y, s=18 + 260 * n / np.nanmax(n), facecolor="#0072B2", edgecolor="white", linewidth=0.8,
                   alpha=0.9, zorder=6, label="Overall (point size ∝ images in bin)")
        low = min(low, float(np.nanmin(x)), float(np.nanmin(y)))
        above = float(np.nansum(n * (y - x))) > 0  # under-confident: the curve runs above the diagonal
    else:
        _no_data(ax)
    lo = max(0.0, math.floor(round(low * 10 - 0.25, 6)) / 10)  # a margin below the lowest point, on a 0.1 grid
    ax.plot([lo, 1], [lo, 1], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Perfect calibration", zorder=1)
    ax.set(xlim=(lo, 1), ylim=(lo, 1.01), xlabel="Confidence (probability of the predicted class, mean in bin)",
           ylabel="Accuracy (share predicted correctly)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="lower right" if above else "upper left", fontsize=7, frameon=True, framealpha=0.9)
    return _save(fig, path)


def render_multiclass_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``roc.png``, ``confusion.png`` and ``calibration.png`` into ``out_dir``.

    6 x 4.5 in at 110 dpi (the confusion matrix grows beyond 6 classes), Okabe-Ito colours.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "roc.png": _plot_roc(report, out_dir / "roc.png"),
        "confusion.png": _plot_confusion(report, out_dir / "confusion.png"),
        "calibration.png": _plot_calibration(report, out_dir / "calibration.png"),
    }

