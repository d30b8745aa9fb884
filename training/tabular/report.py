"""The binary risk model's validation report: model card (Markdown) and HTML page."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.report_page import page_source, render_page
from training.report_render import (
    AUROC_DROP_FLAG,
    NA,
    SLOPE_BAND,
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

__all__ = ["DEFAULT_INTENDED_USE", "DEFAULT_OUT_OF_SCOPE", "PLOT_TITLES", "model_card", "render_html"]


DEFAULT_INTENDED_USE = (
    "Decision support for clinicians: estimates an adult patient's risk of a cardiac event within the "
    "follow-up period, for adults (18 years and older) seen at the participating hospitals, to help "
    "prioritise review and follow-up. The score informs, and never replaces, clinical judgement; it is "
    "not a diagnosis."
)


DEFAULT_OUT_OF_SCOPE = (
    "Diagnosis of an acute cardiac event or triage of emergencies; children and adolescents; patients of "
    "hospitals that did not take part in training, or populations whose case mix, coding or measurement "
    "differs, until the model has been validated there; automated decisions without a clinician; "
    "withholding care because of a low score."
)


PLOT_TITLES = {
    "roc": "ROC curves",
    "calibration": "Calibration",
    "decision_curve": "Decision curve",
}


def _auroc_text(cell: Mapping[str, Any]) -> str:
    auroc = num_text(cell.get("auroc"))
    ci = ci_text(cell.get("auroc_ci95"))
    return auroc if auroc == NA or ci == NA else f"{auroc} ({ci})"


def _cell_flags(cell: Mapping[str, Any], overall: Mapping[str, Any]) -> list[str]:
    flags = []
    auroc, ref = finite(cell.get("auroc")), finite(overall.get("auroc"))
    if auroc is not None and ref is not None and auroc < ref - AUROC_DROP_FLAG:
        flags.append(f"AUROC {ref - auroc:.3f} below overall")
    slope = finite(cell.get("calibration_slope"))
    if slope is not None and not SLOPE_BAND[0] <= slope <= SLOPE_BAND[1]:
        flags.append(f"calibration slope {slope:.2f} outside {SLOPE_BAND[0]}–{SLOPE_BAND[1]}")
    return flags


def _is_small(cell: Mapping[str, Any]) -> bool:
    n, pos = finite(cell.get("n")), finite(cell.get("positives"))
    return (n is not None and n < SMALL_N) or (pos is not None and pos < SMALL_EVENTS)


def _card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the model card and the HTML page show, as plain strings and rows."""
    overall: Mapping[str, Any] = report.get("overall") or {}
    subgroups: Mapping[str, Mapping[str, Any]] = report.get("subgroups") or {}
    hospitals = list(meta.get("hospitals") or report.get("hospitals") or [])
    n_total = finite(overall.get("n"))

    details = model_details(meta, hospitals, "Federated learning with DP-SGD (differentially private SGD at each hospital)") + [
        ("Outcome", text_or_na(meta.get("label"))),
        ("Features", ", ".join(map(str, meta.get("features") or [])) or NA),
    ]

    def mix(group: str) -> list[dict[str, str]]:
        rows = []
        for name, cell in (subgroups.get(group) or {}).items():
            n = finite(cell.get("n"))
            share = n / n_total if n is not None and n_total else None
            rows.append({"name": str(name), "n": int_text(cell.get("n")), "share": pct_text(share), "positives": int_text(cell.get("positives")), "prevalence": pct_text(cell.get("prevalence"))})
        return rows

    population = {
        "summary": f"{int_text(overall.get('n'))} patients, {int_text(overall.get('positives'))} with the outcome (prevalence {pct_text(overall.get('prevalence'))}), from {len(report.get('hospitals') or hospitals)} hospitals.",
        "mixes": [{"title": group_title(g), "rows": mix(g)} for g in subgroups if mix(g)],
    }

    slope_flag = _cell_flags({"calibration_slope": overall.get("calibration_slope")}, {})
    metrics = [
        ("Patients (n)", int_text(overall.get("n")), ""),
        ("Outcome events", int_text(overall.get("positives")), ""),
        ("Prevalence", pct_text(overall.get("prevalence")), ""),
        ("AUROC (95% CI)", _auroc_text(overall), "discrimination"),
        ("AUPRC", num_text(overall.get("auprc")), f"vs. {pct_text(overall.get('prevalence'))} for a random score"),
        ("Brier score", num_text(overall.get("brier"), 4), "lower is better"),
        ("ECE", num_text(overall.get("ece"), 4), "expected calibration error, 10 bins"),
        ("Calibration intercept", num_text(overall.get("calibration_intercept")), "ideal 0 (calibration-in-the-large)"),
        ("Calibration slope", num_text(overall.get("calibration_slope")), f"ideal 1; {WARN} " + slope_flag[0] if slope_flag else "ideal 1"),
        *decision_rows(report),
    ]
    threshold_rows = [
        {
            "threshold": num_text(t.get("threshold"), 2),
            "tp": int_text(t.get("tp")), "fp": int_text(t.get("fp")), "tn": int_text(t.get("tn")), "fn": int_text(t.get("fn")),
            "sensitivity": num_text(t.get("sensitivity")), "specificity": num_text(t.get("specificity")),
            "ppv": num_text(t.get("ppv")), "npv": num_text(t.get("npv")),
            "net_benefit": num_text(t.get("net_benefit"), 4), "net_benefit_treat_all": num_text(t.get("net_benefit_treat_all"), 4),
        }
        for t in overall.get("at_thresholds") or []
    ]

    small: list[str] = []
    undefined: list[str] = []

    def row(label: str, cell: Mapping[str, Any]) -> dict[str, Any]:
        if _is_small(cell):
            small.append(f"{label} (n={int_text(cell.get('n'))}, events={int_text(cell.get('positives'))})")
        if finite(cell.get("auroc")) is None:
            undefined.append(label)
        return {
            "n": int_text(cell.get("n")), "positives": int_text(cell.get("positives")),
            "prevalence": pct_text(cell.get("prevalence")), "auroc": _auroc_text(cell),
            "slope": num_text(cell.get("calibration_slope"), 2), "intercept": num_text(cell.get("calibration_intercept"), 2),
            "brier": num_text(cell.get("brier"), 4),
        }

    groups, flagged = subgroup_tables(subgroups, overall, _cell_flags, row)

    caveats = [str(c) for c in meta.get("caveats") or []]
    suppressed = [str(s) for s in report.get("suppressed") or []]
    if suppressed:
        caveats.append(f"{len(suppressed)} subgroup cell(s) not reported (too few patients): {', '.join(suppressed)}.")
    if small:
        caveats.append(f"Small subgroups (fewer than {SMALL_N} patients or {SMALL_EVENTS} events); their estimates are imprecise: {', '.join(small)}.")
    if slope_flag:
        caveats.append(f"Overall {slope_flag[0]}: predicted risks are {'too extreme' if finite(overall.get('calibration_slope')) < SLOPE_BAND[0] else 'too modest'}; consider recalibration before use.")  # type: ignore[operator]
    intercept = finite(overall.get("calibration_intercept"))
    if intercept is not None and abs(intercept) > 0.2:
        caveats.append(f"Overall calibration intercept {intercept:.2f}: the model {'under' if intercept > 0 else 'over'}estimates risk on average.")
    if flagged:
        caveats.append(f"Subgroups with worse discrimination or miscalibration ({WARN}): {'; '.join(flagged)}.")
    if undefined:
        caveats.append(f"AUROC not computable (only one outcome class) for: {', '.join(undefined)}.")

    return {
        **card_provenance(report, meta),
        "details": details,
        "intended_use": text_or_na(meta.get("intended_use") or DEFAULT_INTENDED_USE),
        "out_of_scope": text_or_na(meta.get("out_of_scope") or DEFAULT_OUT_OF_SCOPE),
        "population": population,
        "metrics": metrics,
        "thresholds": threshold_rows,
        "groups": groups,
        "caveats": caveats,
        "flag_rule": f"AUROC is more than {AUROC_DROP_FLAG} below the overall AUROC, or whose calibration slope is outside {SLOPE_BAND[0]}–{SLOPE_BAND[1]}.",
    }


def model_card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The model card as Markdown (plots linked as the PNG files written beside it)."""
    c = _card(report, meta)
    results: list[str] = []
    if c["thresholds"]:
        results += ["**At decision thresholds**", ""]
        results += md_table(
            ["Threshold", "TP", "FP", "TN", "FN", "Sensitivity", "Specificity", "PPV", "NPV", "Net benefit", "Treat all"],
            [[t["threshold"], t["tp"], t["fp"], t["tn"], t["fn"], t["sensitivity"], t["specificity"], t["ppv"], t["npv"], t["net_benefit"], t["net_benefit_treat_all"]] for t in c["thresholds"]],
        )
    results += ["![ROC curves](roc.png)", "![Calibration](calibration.png)", "![Decision curve](decision_curve.png)", ""]
    return markdown_card(
        c,
        mix_columns=["events", "prevalence"],
        mix_row=lambda r: [r["positives"], r["prevalence"]],
        results=results,
        subgroup_columns=["n", "Events", "Prevalence", "AUROC (95% CI)", "Cal. slope", "Cal. intercept", "Brier"],
        subgroup_row=lambda r: [r["n"], r["positives"], r["prevalence"], r["auroc"], r["slope"], r["intercept"], r["brier"]],
    )


_HTML = page_source(
    subtitle="Model card and clinical validation of a registered model version.",
    population="""<div class="figs">
{% for mix in c.population.mixes %}<table>
<tr><th>{{ mix.title }}</th><th class="num">n</th><th class="num">share</th><th class="num">events</th><th class="num">prevalence</th></tr>
{% for r in mix.rows %}<tr><td>{{ r.name }}</td><td class="num">{{ r.n }}</td><td class="num">{{ r.share }}</td><td class="num">{{ r.positives }}</td><td class="num">{{ r.prevalence }}</td></tr>
{% endfor %}</table>
{% endfor %}</div>
""",
    results="""{% if c.thresholds %}<h3>At decision thresholds</h3>
<table>
<tr><th class="num">Threshold</th><th class="num">TP</th><th class="num">FP</th><th class="num">TN</th><th class="num">FN</th><th class="num">Sensitivity</th><th class="num">Specificity</th><th class="num">PPV</th><th class="num">NPV</th><th class="num">Net benefit</th><th class="num">Treat all</th></tr>
{% for t in c.thresholds %}<tr><td class="num">{{ t.threshold }}</td><td class="num">{{ t.tp }}</td><td class="num">{{ t.fp }}</td><td class="num">{{ t.tn }}</td><td class="num">{{ t.fn }}</td><td class="num">{{ t.sensitivity }}</td><td class="num">{{ t.specificity }}</td><td class="num">{{ t.ppv }}</td><td class="num">{{ t.npv }}</td><td class="num">{{ t.net_benefit }}</td><td class="num">{{ t.net_benefit_treat_all }}</td></tr>
{% endfor %}</table>
{% endif %}
""",
    subgroup_table="""<table>
<tr><th>{{ g.title }}</th><th class="num">n</th><th class="num">Events</th><th class="num">Prevalence</th><th class="num">AUROC (95% CI)</th><th class="num">Cal. slope</th><th class="num">Cal. intercept</th><th class="num">Brier</th><th>Flag</th></tr>
{% for r in g.rows %}<tr class="{{ 'flagged' if r.flags else '' }}"><td>{{ r.name }}</td><td class="num">{{ r.n }}</td><td class="num">{{ r.positives }}</td><td class="num">{{ r.prevalence }}</td><td class="num">{{ r.auroc }}</td><td class="num">{{ r.slope }}</td><td class="num">{{ r.intercept }}</td><td class="num">{{ r.brier }}</td><td>{% for f in r.flags %}<span class="badge warn">⚠ {{ f }}</span> {% endfor %}</td></tr>
{% endfor %}</table>
""",
)


def render_html(report: Mapping[str, Any], meta: Mapping[str, Any], images: Mapping[str, str | bytes | Path] | None = None) -> str:
    """One self-contained HTML page: model card, metrics, subgroups and the plots inline.

    ``images`` maps a plot name (``"roc"`` or ``"roc.png"``; likewise ``calibration`` and
    ``decision_curve``) to a base64 PNG string, raw PNG ``bytes``, or a ``Path`` to read
    (so :func:`render_plots`' result can be passed as is). Known plots come first, in the
    order ROC, calibration, decision curve; other names follow, captioned with their name.
    All text from ``report`` and ``meta`` is HTML-escaped (Jinja2 autoescape).
    """
    return render_page(_HTML, _card, PLOT_TITLES, report, meta, images)
