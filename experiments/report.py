"""Clinical validation report of a registered model version: plots, model card, HTML.

Input is the report dict of ``training.tabular.validation`` (overall, per-subgroup cells, suppressed
cells, hospitals) plus a provenance ``meta`` dict; output is what a clinical validator reads
next to the model version in MLflow (a multi-class report of ``training.imaging.validation``,
``report["task"] == "multiclass"``, is rendered by :mod:`experiments.report_multiclass` through
the same four functions):

* ``roc.png``, ``calibration.png``, ``decision_curve.png`` (:func:`render_plots`),
* ``model_card.md`` (:func:`model_card`),
* ``report.html``: one self-contained page, images embedded as data URIs (:func:`render_html`),
* ``report.json``: canonical JSON of the report; its SHA-256 (:func:`report_sha256`) is printed
  at the bottom of the card and of the page, so a reader can tie both to the exact numbers.

Any metric may be ``None`` (a cell without positives has no AUROC): it renders as "n/a".

``meta`` keys (all optional; missing ones render as "n/a"): ``model_name``, ``version``,
``experiment``, ``run_id``, ``created`` (ISO time), ``privacy`` {``epsilon``, ``delta``,
``accountant``}, ``strategy``, ``rounds``, ``hospitals`` (list), ``schema_fingerprints``
{hospital: fingerprint}, ``code_version``, ``model_kind`` (or ``kind``), ``hparams`` (dict),
``features`` (list), ``label`` (description of the outcome), ``intended_use``,
``out_of_scope`` (text; defaults for the cardiac-risk demo), ``caveats`` (list of text).

matplotlib is imported inside :func:`render_plots` only: importing this module (as the API
does) costs no plotting library. Plots use matplotlib's object API on an Agg canvas, never
pyplot, so there is no global figure registry to leak into and rendering is thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AUROC_DROP_FLAG",
    "DEFAULT_INTENDED_USE",
    "DEFAULT_OUT_OF_SCOPE",
    "SLOPE_BAND",
    "canonical_json",
    "decision_rows",
    "is_multiclass",
    "model_card",
    "render_html",
    "render_plots",
    "report_sha256",
    "write_report_artifacts",
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

FIG_SIZE = (6.0, 4.5)  # inches
FIG_DPI = 110
#: Okabe-Ito palette (colour-blind safe); black is kept for the overall line.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
OVERALL_COLOUR = "#000000"
#: Per-hospital calibration lines skip bins with fewer patients (noise); overall shows all bins.
MIN_BIN_N_HOSPITAL = 20
PLOT_TITLES = {
    "roc": "ROC curves",
    "calibration": "Calibration",
    "decision_curve": "Decision curve",
}
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


# ---------------------------------------------------------------- canonical JSON and hash


def is_multiclass(report: Mapping[str, Any]) -> bool:
    """Whether ``report`` is a multi-class report (``training.imaging.validation``)."""
    return report.get("task") == "multiclass"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays, without importing NumPy here
        return obj.tolist()
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serialisable")


def canonical_json(report: Mapping[str, Any]) -> bytes:
    """The report as canonical JSON bytes (sorted keys, no whitespace, ASCII); NaN/inf raise ValueError.

    Same text as ``training.tabular.validation.report_hash`` hashes, so both hashes agree.
    """
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.encode("utf-8")


def report_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json`, i.e. of the bytes of ``report.json``."""
    return hashlib.sha256(canonical_json(report)).hexdigest()


# ---------------------------------------------------------------- formatting helpers


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _num(x: Any, digits: int = 3) -> str:
    value = _finite(x)
    return NA if value is None else f"{value:.{digits}f}"


def _int(x: Any) -> str:
    value = _finite(x)
    return NA if value is None else f"{int(round(value)):,}"


def _pct(x: Any, digits: int = 1) -> str:
    value = _finite(x)
    return NA if value is None else f"{100 * value:.{digits}f}%"


def _ci(ci: Any, digits: int = 3) -> str:
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return NA
    lo, hi = _finite(ci[0]), _finite(ci[1])
    return NA if lo is None or hi is None else f"{lo:.{digits}f}–{hi:.{digits}f}"


def _auroc_text(cell: Mapping[str, Any]) -> str:
    auroc = _num(cell.get("auroc"))
    ci = _ci(cell.get("auroc_ci95"))
    return auroc if auroc == NA or ci == NA else f"{auroc} ({ci})"


def _text(x: Any) -> str:
    return NA if x is None or x == "" else str(x)


def _group_title(key: str) -> str:
    return {"age_band": "Age band", "sex": "Sex", "hospital": "Hospital"}.get(key, key.replace("_", " ").capitalize())


# ---------------------------------------------------------------- the card's content (shared by Markdown and HTML)


def _cell_flags(cell: Mapping[str, Any], overall: Mapping[str, Any]) -> list[str]:
    flags = []
    auroc, ref = _finite(cell.get("auroc")), _finite(overall.get("auroc"))
    if auroc is not None and ref is not None and auroc < ref - AUROC_DROP_FLAG:
        flags.append(f"AUROC {ref - auroc:.3f} below overall")
    slope = _finite(cell.get("calibration_slope"))
    if slope is not None and not SLOPE_BAND[0] <= slope <= SLOPE_BAND[1]:
        flags.append(f"calibration slope {slope:.2f} outside {SLOPE_BAND[0]}–{SLOPE_BAND[1]}")
    return flags


def _is_small(cell: Mapping[str, Any]) -> bool:
    n, pos = _finite(cell.get("n")), _finite(cell.get("positives"))
    return (n is not None and n < SMALL_N) or (pos is not None and pos < SMALL_EVENTS)


def _privacy_text(meta: Mapping[str, Any]) -> str:
    privacy = meta.get("privacy") or {}
    eps, delta = _finite(privacy.get("epsilon")), _finite(privacy.get("delta"))
    if eps is None and delta is None:
        return NA
    text = f"ε = {_num(eps, 2)}, δ = {NA if delta is None else f'{delta:.0e}'}"
    if privacy.get("accountant"):
        text += f" ({privacy['accountant']} accountant)"
    return text


def _model_details(meta: Mapping[str, Any], hospitals: Sequence[Any], training: str) -> list[tuple[str, str]]:
    """The first rows of the card's "Model details" (shared with the multi-class card)."""
    kind = meta.get("model_kind") or meta.get("kind")
    hparams = meta.get("hparams") or {}
    return [
        ("Name", _text(meta.get("model_name"))),
        ("Version", _text(meta.get("version"))),
        ("Created", _text(meta.get("created"))),
        ("Model", _text(kind) + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(hparams.items())) + ")" if hparams else "")),
        ("Training", training),
        ("Strategy", _text(meta.get("strategy"))),
        ("Rounds", _text(meta.get("rounds"))),
        ("Hospitals", f"{len(hospitals)}: {', '.join(map(str, hospitals))}" if hospitals else NA),
        ("Privacy", _privacy_text(meta)),
    ]


def _card_provenance(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``title``, ``provenance`` rows, ``fingerprints`` and ``sha256`` (shared with the multi-class card)."""
    fingerprints = meta.get("schema_fingerprints") or {}
    provenance = [
        ("Experiment", _text(meta.get("experiment"))),
        ("Run id", _text(meta.get("run_id"))),
        ("Code version", _text(meta.get("code_version"))),
        ("Report SHA-256", report_sha256(report)),
    ]
    return {
        "title": f"{_text(meta.get('model_name'))} v{_text(meta.get('version'))}",
        "provenance": provenance,
        "fingerprints": [(str(h), _text(f)) for h, f in sorted(fingerprints.items())],
        "sha256": provenance[-1][1],
    }


def _subgroup_tables(
    subgroups: Mapping[str, Mapping[str, Any]],
    overall: Mapping[str, Any],
    cell_flags: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]],
    row: Callable[[str, Mapping[str, Any]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The card's subgroup tables ``[{"title", "key", "rows"}]`` and the flagged cells ("group=value: flags").

    ``cell_flags(cell, overall)`` gives a cell's flags; ``row(label, cell)`` its table row, less ``name``
    and ``flags`` (added here), and may note the cell in the caller's lists (shared with the multi-class card).
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
        groups.append({"title": _group_title(group), "key": group, "rows": rows})
    return groups, flagged


def decision_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Metrics rows for the served decision rule (report ``decision``, docs/imbalance.md):
    the threshold, how it was chosen, and sensitivity/specificity at it on the held-out test data."""
    decision: Mapping[str, Any] = report.get("decision") or {}
    if not decision:
        return []
    rule, source = str(decision.get("rule")), str(decision.get("source") or "")
    how = {"youden": "Youden's J (max sensitivity + specificity - 1)", "fixed": "fixed in the spec",
           "sensitivity": f"highest threshold with sensitivity >= {_num(decision.get('target'), 2)}"}.get(rule, source)
    val = decision.get("val") or {}
    if val:
        how += f"; chosen on the val part (n={_int(val.get('n'))}, sensitivity {_num(val.get('sensitivity'))}, " \
               f"specificity {_num(val.get('specificity'))})"
    elif rule == "prior":
        how = f"{source}: the class prior the model was trained under"
    if decision.get("threshold") is None:
        scale = ", ".join(_num(s, 3) for s in decision.get("class_scale") or [])
        served: Mapping[str, Any] = decision.get("test") or {}
        return [("Decision rule", "prior-corrected argmax", f"{how}; class scale [{scale}]")] + ([
            ("Balanced accuracy (served labels)", _num(served.get("balanced_accuracy")), "held-out test data, prior-corrected"),
            ("Accuracy (served labels)", _num(served.get("accuracy")), "held-out test data, prior-corrected"),
        ] if served else [])
    test: Mapping[str, Any] = decision.get("test") or {}
    return [
        ("Decision threshold", _num(decision.get("threshold"), 4), how),
        ("Sensitivity at threshold", _num(test.get("sensitivity")), "held-out test data"),
        ("Specificity at threshold", _num(test.get("specificity")), "held-out test data"),
        ("Balanced accuracy at threshold", _num(test.get("balanced_accuracy")), "held-out test data"),
    ]


def _card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the model card and the HTML page show, as plain strings and rows."""
    overall: Mapping[str, Any] = report.get("overall") or {}
    subgroups: Mapping[str, Mapping[str, Any]] = report.get("subgroups") or {}
    hospitals = list(meta.get("hospitals") or report.get("hospitals") or [])
    n_total = _finite(overall.get("n"))

    details = _model_details(meta, hospitals, "Federated learning with DP-SGD (differentially private SGD at each hospital)") + [
        ("Outcome", _text(meta.get("label"))),
        ("Features", ", ".join(map(str, meta.get("features") or [])) or NA),
    ]

    def mix(group: str) -> list[dict[str, str]]:
        rows = []
        for name, cell in (subgroups.get(group) or {}).items():
            n = _finite(cell.get("n"))
            share = n / n_total if n is not None and n_total else None
            rows.append({"name": str(name), "n": _int(cell.get("n")), "share": _pct(share), "positives": _int(cell.get("positives")), "prevalence": _pct(cell.get("prevalence"))})
        return rows

    population = {
        "summary": f"{_int(overall.get('n'))} patients, {_int(overall.get('positives'))} with the outcome (prevalence {_pct(overall.get('prevalence'))}), from {len(report.get('hospitals') or hospitals)} hospitals.",
        "mixes": [{"title": _group_title(g), "rows": mix(g)} for g in subgroups if mix(g)],
    }

    slope_flag = _cell_flags({"calibration_slope": overall.get("calibration_slope")}, {})
    metrics = [
        ("Patients (n)", _int(overall.get("n")), ""),
        ("Outcome events", _int(overall.get("positives")), ""),
        ("Prevalence", _pct(overall.get("prevalence")), ""),
        ("AUROC (95% CI)", _auroc_text(overall), "discrimination"),
        ("AUPRC", _num(overall.get("auprc")), f"vs. {_pct(overall.get('prevalence'))} for a random score"),
        ("Brier score", _num(overall.get("brier"), 4), "lower is better"),
        ("ECE", _num(overall.get("ece"), 4), "expected calibration error, 10 bins"),
        ("Calibration intercept", _num(overall.get("calibration_intercept")), "ideal 0 (calibration-in-the-large)"),
        ("Calibration slope", _num(overall.get("calibration_slope")), f"ideal 1; {WARN} " + slope_flag[0] if slope_flag else "ideal 1"),
        *decision_rows(report),
    ]
    threshold_rows = [
        {
            "threshold": _num(t.get("threshold"), 2),
            "tp": _int(t.get("tp")), "fp": _int(t.get("fp")), "tn": _int(t.get("tn")), "fn": _int(t.get("fn")),
            "sensitivity": _num(t.get("sensitivity")), "specificity": _num(t.get("specificity")),
            "ppv": _num(t.get("ppv")), "npv": _num(t.get("npv")),
            "net_benefit": _num(t.get("net_benefit"), 4), "net_benefit_treat_all": _num(t.get("net_benefit_treat_all"), 4),
        }
        for t in overall.get("at_thresholds") or []
    ]

    small: list[str] = []
    undefined: list[str] = []

    def row(label: str, cell: Mapping[str, Any]) -> dict[str, Any]:
        if _is_small(cell):
            small.append(f"{label} (n={_int(cell.get('n'))}, events={_int(cell.get('positives'))})")
        if _finite(cell.get("auroc")) is None:
            undefined.append(label)
        return {
            "n": _int(cell.get("n")), "positives": _int(cell.get("positives")),
            "prevalence": _pct(cell.get("prevalence")), "auroc": _auroc_text(cell),
            "slope": _num(cell.get("calibration_slope"), 2), "intercept": _num(cell.get("calibration_intercept"), 2),
            "brier": _num(cell.get("brier"), 4),
        }

    groups, flagged = _subgroup_tables(subgroups, overall, _cell_flags, row)

    caveats = [str(c) for c in meta.get("caveats") or []]
    suppressed = [str(s) for s in report.get("suppressed") or []]
    if suppressed:
        caveats.append(f"{len(suppressed)} subgroup cell(s) not reported (too few patients): {', '.join(suppressed)}.")
    if small:
        caveats.append(f"Small subgroups (fewer than {SMALL_N} patients or {SMALL_EVENTS} events); their estimates are imprecise: {', '.join(small)}.")
    if slope_flag:
        caveats.append(f"Overall {slope_flag[0]}: predicted risks are {'too extreme' if _finite(overall.get('calibration_slope')) < SLOPE_BAND[0] else 'too modest'}; consider recalibration before use.")  # type: ignore[operator]
    intercept = _finite(overall.get("calibration_intercept"))
    if intercept is not None and abs(intercept) > 0.2:
        caveats.append(f"Overall calibration intercept {intercept:.2f}: the model {'under' if intercept > 0 else 'over'}estimates risk on average.")
    if flagged:
        caveats.append(f"Subgroups with worse discrimination or miscalibration ({WARN}): {'; '.join(flagged)}.")
    if undefined:
        caveats.append(f"AUROC not computable (only one outcome class) for: {', '.join(undefined)}.")

    return {
        **_card_provenance(report, meta),
        "details": details,
        "intended_use": _text(meta.get("intended_use") or DEFAULT_INTENDED_USE),
        "out_of_scope": _text(meta.get("out_of_scope") or DEFAULT_OUT_OF_SCOPE),
        "population": population,
        "metrics": metrics,
        "thresholds": threshold_rows,
        "groups": groups,
        "caveats": caveats,
        "flag_rule": f"AUROC is more than {AUROC_DROP_FLAG} below the overall AUROC, or whose calibration slope is outside {SLOPE_BAND[0]}–{SLOPE_BAND[1]}.",
    }


# ---------------------------------------------------------------- Markdown model card


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell or paragraph: no raw HTML tags, no cell breaks."""
    return _TAG_START.sub("&lt;", str(text)).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _markdown_card(
    c: Mapping[str, Any],
    *,
    mix_columns: Sequence[str],
    mix_row: Callable[[Mapping[str, Any]], Sequence[Any]],
    results: Sequence[str],
    subgroup_columns: Sequence[str],
    subgroup_row: Callable[[Mapping[str, Any]], Sequence[Any]],
) -> str:
    """The model card's Markdown from :func:`_card`'s content (shared with the multi-class card).

    What differs between cards is passed in: the population mix columns after "n" and "share"
    (``mix_row`` gives their cells), the ``results`` lines after the metrics table (plots included)
    and the subgroup table's columns between the group's name and the flag.
    """
    out = [f"# Model card: {_md(c['title'])}", ""]
    out += ["## Model details", ""] + _md_table(["Field", "Value"], c["details"])
    out += ["## Intended use", "", _md(c["intended_use"]), ""]
    out += ["## Out-of-scope use", "", _md(c["out_of_scope"]), ""]
    out += ["## Population", "", _md(c["population"]["summary"]), ""]
    for mix in c["population"]["mixes"]:
        out += [f"**{_md(mix['title'])}**", ""]
        out += _md_table([mix["title"], "n", "share", *mix_columns], [[r["name"], r["n"], r["share"], *mix_row(r)] for r in mix["rows"]])
    out += ["## Metrics", ""] + _md_table(["Metric", "Value", "Note"], c["metrics"])
    out += results
    out += ["## Subgroups", "", _md(f"{WARN} flags a subgroup whose {c['flag_rule']}"), ""]
    for group in c["groups"]:
        out += [f"### {_md(group['title'])}", ""]
        out += _md_table(
            [group["title"], *subgroup_columns, "Flag"],
            [[r["name"], *subgroup_row(r), (WARN + " " + "; ".join(r["flags"])) if r["flags"] else ""] for r in group["rows"]],
        )
    out += ["## Caveats", ""] + ([f"- {_md(x)}" for x in c["caveats"]] or ["- None recorded."]) + [""]
    out += ["## Provenance", ""] + _md_table(["Field", "Value"], c["provenance"])
    if c["fingerprints"]:
        out += ["**Schema fingerprints**", ""] + _md_table(["Hospital", "Fingerprint"], c["fingerprints"])
    return "\n".join(out)


def model_card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The model card as Markdown (plots linked as the PNG files written beside it)."""
    if is_multiclass(report):
        from experiments.report_multiclass import multiclass_model_card

        return multiclass_model_card(report, meta)
    c = _card(report, meta)
    results: list[str] = []
    if c["thresholds"]:
        results += ["**At decision thresholds**", ""]
        results += _md_table(
            ["Threshold", "TP", "FP", "TN", "FN", "Sensitivity", "Specificity", "PPV", "NPV", "Net benefit", "Treat all"],
            [[t["threshold"], t["tp"], t["fp"], t["tn"], t["fn"], t["sensitivity"], t["specificity"], t["ppv"], t["npv"], t["net_benefit"], t["net_benefit_treat_all"]] for t in c["thresholds"]],
        )
    results += ["![ROC curves](roc.png)", "![Calibration](calibration.png)", "![Decision curve](decision_curve.png)", ""]
    return _markdown_card(
        c,
        mix_columns=["events", "prevalence"],
        mix_row=lambda r: [r["positives"], r["prevalence"]],
        results=results,
        subgroup_columns=["n", "Events", "Prevalence", "AUROC (95% CI)", "Cal. slope", "Cal. intercept", "Brier"],
        subgroup_row=lambda r: [r["n"], r["positives"], r["prevalence"], r["auroc"], r["slope"], r["intercept"], r["brier"]],
    )


# ---------------------------------------------------------------- HTML page

#: The page style of both pages (the multi-class page, :mod:`experiments.report_multiclass`, adds to it).
_CSS = """:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; --warn-bg:#fff8c5; --warn-fg:#7d4e00; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:var(--bg); line-height:1.5; font-size:15px; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 20px 0 6px; color: var(--muted); }
.sub { color: var(--muted); margin: 0 0 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9rem; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 190px; background: none; color: var(--muted); font-weight: 500; }
tr.flagged td { background: #fffbea; }
.badge { display:inline-block; padding: 1px 7px; border-radius: 10px; font-size: 0.78rem; font-weight: 600; }
.warn { background: var(--warn-bg); color: var(--warn-fg); border: 1px solid #e3c96f; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; }
figure img { display: block; width: 100%; max-width: 480px; height: auto; }
figcaption { font-size: 0.82rem; color: var(--muted); text-align: center; }
ul.caveats li { margin-bottom: 4px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85rem; word-break: break-all; }
footer { margin-top: 40px; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted); font-size: 0.8rem; }
"""

#: The Jinja source of a report page with ``string.Template`` slots for what differs between the
#: binary and the multi-class page: ``css`` (style added to _CSS), ``subtitle``, ``population``
#: (the subgroup mix tables), ``results`` (after the metrics table, before the plots) and
#: ``subgroup_table`` (the table of one group, inside the loop over ``c.groups``). Filled by :func:`_page`.
_PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Validation report: {{ c.title }}</title>
<style>
""" + _CSS + """${css}</style>
</head>
<body>
<main>
<h1>Validation report: {{ c.title }}</h1>
<p class="sub">${subtitle}</p>

<h2 id="details">Model details</h2>
<table class="kv">
{% for k, v in c.details %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>

<h2 id="intended-use">Intended use</h2>
<p>{{ c.intended_use }}</p>

<h2 id="out-of-scope">Out-of-scope use</h2>
<p>{{ c.out_of_scope }}</p>

<h2 id="population">Population</h2>
<p>{{ c.population.summary }}</p>
${population}
<h2 id="metrics">Metrics</h2>
<table>
<tr><th>Metric</th><th class="num">Value</th><th>Note</th></tr>
{% for k, v, note in c.metrics %}<tr><td>{{ k }}</td><td class="num">{{ v }}</td><td>{% if "⚠" in note %}<span class="badge warn">{{ note }}</span>{% else %}{{ note }}{% endif %}</td></tr>
{% endfor %}</table>
${results}{% if images %}<div class="figs">
{% for name, title, data in images %}<figure><img src="data:image/png;base64,{{ data }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}</div>
{% endif %}

<h2 id="subgroups">Subgroups</h2>
<p class="sub"><span class="badge warn">⚠</span> flags a subgroup whose {{ c.flag_rule }}</p>
{% for g in c.groups %}<h3>{{ g.title }}</h3>
${subgroup_table}{% endfor %}

<h2 id="caveats">Caveats</h2>
<ul class="caveats">
{% for x in c.caveats %}<li>{{ x }}</li>
{% else %}<li>None recorded.</li>
{% endfor %}</ul>

<h2 id="provenance">Provenance</h2>
<table class="kv">
{% for k, v in c.provenance %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>
{% endfor %}</table>
{% if c.fingerprints %}<h3>Schema fingerprints</h3>
<table>
<tr><th>Hospital</th><th>Fingerprint</th></tr>
{% for h, f in c.fingerprints %}<tr><td>{{ h }}</td><td class="mono">{{ f }}</td></tr>
{% endfor %}</table>
{% endif %}

<footer>Report SHA-256 <code>{{ c.sha256 }}</code> (of <code>report.json</code>, canonical JSON){% if created %} · model created {{ created }}{% endif %}</footer>
</main>
</body>
</html>
""")


def _page(*, subtitle: str, population: str, results: str, subgroup_table: str, css: str = "") -> str:
    """The Jinja source of a report page: :data:`_PAGE` with its slots filled."""
    return _PAGE.substitute(css=css, subtitle=subtitle, population=population, results=results, subgroup_table=subgroup_table)


_HTML = _page(
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


@functools.lru_cache(maxsize=None)
def _jinja_template(source: str) -> Any:
    """``source`` compiled as an autoescaping Jinja2 template, once per source (Jinja2 imported on first use)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.from_string(source)


def _image_base64(name: str, value: str | bytes | Path) -> str:
    if isinstance(value, Path):
        value = value.read_bytes()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    data = "".join(str(value).split())
    if not _BASE64.match(data):
        raise ValueError(f"image {name!r}: not base64 (pass a Path to read a file)")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error as err:
        raise ValueError(f"image {name!r}: not base64: {err}") from None
    return data


def _render_page(source: str, card: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]],
                 titles: Mapping[str, str], report: Mapping[str, Any], meta: Mapping[str, Any],
                 images: Mapping[str, str | bytes | Path] | None) -> str:
    """Render the page ``source`` with ``card(report, meta)`` and ``images`` (shared with the multi-class page).

    Plots named in ``titles`` come first, in its order, captioned with its titles; other names follow,
    captioned with their name.
    """
    images = images or {}
    order = {name: i for i, name in enumerate(titles)}
    keys = sorted(images, key=lambda k: (order.get(k.removesuffix(".png"), len(order)), k))
    shown = [(k, titles.get(k.removesuffix(".png"), k), _image_base64(k, images[k])) for k in keys]
    return str(_jinja_template(source).render(c=card(report, meta), images=shown, created=meta.get("created")))


def render_html(report: Mapping[str, Any], meta: Mapping[str, Any], images: Mapping[str, str | bytes | Path] | None = None) -> str:
    """One self-contained HTML page: model card, metrics, subgroups and the plots inline.

    ``images`` maps a plot name (``"roc"`` or ``"roc.png"``; likewise ``calibration`` and
    ``decision_curve``) to a base64 PNG string, raw PNG ``bytes``, or a ``Path`` to read
    (so :func:`render_plots`' result can be passed as is). Known plots come first, in the
    order ROC, calibration, decision curve; other names follow, captioned with their name.
    All text from ``report`` and ``meta`` is HTML-escaped (Jinja2 autoescape). A multi-class
    report gets the multi-class page (plots ROC, confusion matrix, calibration).
    """
    if is_multiclass(report):
        from experiments.report_multiclass import render_multiclass_html

        return render_multiclass_html(report, meta, images)
    return _render_page(_HTML, _card, PLOT_TITLES, report, meta, images)


# ---------------------------------------------------------------- plots


def _arr(values: Any) -> Any:
    import numpy as np

    return np.array([math.nan if _finite(v) is None else float(v) for v in (values or [])], dtype=float)


def _new_axes(title: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=FIG_DPI)
    fig.clear()
    return path


def _hospital_cells(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Per-hospital cells to draw beside the overall curve; none when one hospital (it is the overall)."""
    cells = (report.get("subgroups") or {}).get("hospital") or {}
    return [(str(h), cells[h]) for h in cells] if len(cells) > 1 else []


def _style(i: int) -> dict[str, Any]:
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": ("-", "--", ":", "-.")[(i // len(PALETTE)) % 4]}


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "not enough data", ha="center", va="center", transform=ax.transAxes, color="#57606a")


def _plot_roc_curves(title: str, curves: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]], path: Path,
                     legend: Mapping[str, Any] | None = None) -> Path:
    """ROC plot of ``(label, roc, line style)`` curves beside the chance line (shared with the multi-class plot).

    A curve with fewer than two points is left out; ``legend`` adds to the legend's arguments (e.g. a title).
    """
    fig, ax = _new_axes(title)
    ax.plot([0, 1], [0, 1], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Chance (AUROC 0.5)")
    drawn = 0
    for label, roc, style in curves:
        fpr, tpr = _arr(roc.get("fpr")), _arr(roc.get("tpr"))
        if len(fpr) < 2 or len(fpr) != len(tpr):
            continue
        ax.plot(fpr, tpr, label=label, **style)
        drawn += 1
    if not drawn:
        _no_data(ax)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false positive rate)", ylabel="Sensitivity (true positive rate)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.9, **(legend or {}))
    return _save(fig, path)


def _plot_roc(report: Mapping[str, Any], path: Path) -> Path:
    curves = [(f"Overall (n={_int((report.get('overall') or {}).get('n'))})", report.get("overall") or {}, {"color": OVERALL_COLOUR, "linewidth": 2.2, "zorder": 5})]
    curves += [(h, cell, {**_style(i), "linewidth": 1.2, "alpha": 0.9}) for i, (h, cell) in enumerate(_hospital_cells(report))]

    def label(name: str, cell: Mapping[str, Any]) -> str:
        ci = _ci(cell.get("auroc_ci95"), 2)
        return f"{name}: AUROC {_num(cell.get('auroc'))}" + (f" ({ci})" if ci != NA else "")

    return _plot_roc_curves("ROC curve", [(label(name, cell), cell.get("roc") or {}, style) for name, cell, style in curves], path)


def _plot_calibration(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    slope, intercept = _num(overall.get("calibration_slope"), 2), _num(overall.get("calibration_intercept"), 2)
    fig, ax = _new_axes(f"Calibration: slope {slope}, intercept {intercept}, ECE {_num(overall.get('ece'), 3)}")
    top = 0.0
    bins = [b for b in overall.get("calibration_curve") or [] if _finite(b.get("observed")) is not None and (_finite(b.get("n")) or 0) > 0]
    hospitals = _hospital_cells(report)
    for i, (h, cell) in enumerate(hospitals):
        hb = [b for b in cell.get("calibration_curve") or [] if _finite(b.get("observed")) is not None and (_finite(b.get("n")) or 0) >= MIN_BIN_N_HOSPITAL]
        if len(hb) >= 2:
            x, y = _arr([b.get("mean_predicted") for b in hb]), _arr([b.get("observed") for b in hb])
            ax.plot(x, y, marker="o", markersize=2.5, linewidth=0.9, alpha=0.75, label=h, **_style(i))
            top = max(top, float(np.nanmax(x)), float(np.nanmax(y)))
    if bins:
        x, y = _arr([b.get("mean_predicted") for b in bins]), _arr([b.get("observed") for b in bins])
        n = _arr([b.get("n") for b in bins])
        sizes = 18 + 260 * n / np.nanmax(n)
        ax.plot(x, y, color=OVERALL_COLOUR, linewidth=1.4, zorder=5)
        ax.scatter(x, y, s=sizes, facecolor="#0072B2", edgecolor="white", linewidth=0.8, alpha=0.9, zorder=6,
                   label="Overall (point size ∝ patients in bin)")
        top = max(top, float(np.nanmax(x)), float(np.nanmax(y)))
    else:
        _no_data(ax)
    lim = 1.0 if top <= 0 else min(1.0, max(0.1, math.ceil(top * 1.1 / 0.05) * 0.05))
    ax.plot([0, lim], [0, lim], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Perfect calibration", zorder=1)
    ax.set(xlim=(0, lim), ylim=(0, lim), xlabel="Predicted risk (mean in bin)", ylabel="Observed event rate")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper left", fontsize=7, frameon=True, framealpha=0.9)
    return _save(fig, path)


def _plot_decision_curve(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    dc = overall.get("decision_curve") or {}
    t, model, treat_all = _arr(dc.get("threshold")), _arr(dc.get("model")), _arr(dc.get("treat_all"))
    thresholds = [float(x) for x in report.get("thresholds") or [] if _finite(x) is not None]
    ok = len(t) >= 2 and len(model) == len(t)
    prevalence = _finite(overall.get("prevalence"))
    finite = model[np.isfinite(model)] if ok else np.array([])
    # y: from slightly below "treat none" (0) up to the prevalence, the most any strategy can gain.
    ymax = prevalence if prevalence and prevalence > 0 else (float(finite.max()) if finite.size and finite.max() > 0 else 0.05)
    ymin = -0.15 * ymax
    # x: up to where the model's net benefit fades out (below 5% of the attainable), and past the
    # reported thresholds; not the whole 0..1 grid, where every curve is at or below zero.
    xmax = 1.0
    if ok:
        useful = t[np.isfinite(model) & (model > 0.05 * ymax)]
        reach = max([1.25 * float(useful.max()) if useful.size else 0.0] + [1.5 * x for x in thresholds] + [0.3])
        xmax = min(float(np.nanmax(t)), math.ceil(round(reach * 10, 6)) / 10)
    fig, ax = _new_axes("Decision curve: net benefit")
    if ok:
        ax.plot(t, model, color="#0072B2", linewidth=2.0, label="Model", zorder=5)
        if len(treat_all) == len(t):
            ax.plot(t, treat_all, color="#D55E00", linestyle="--", linewidth=1.3, label="Treat all")
    else:
        _no_data(ax)
    ax.axhline(0.0, color="#57606a", linewidth=1.1, label="Treat none")
    for i, thr in enumerate(thresholds):
        ax.axvline(thr, color="#b0b0b0", linestyle=":", linewidth=0.9, label=None if i else "Reported thresholds")
    ax.set(xlim=(0, xmax), ylim=(ymin, 1.08 * ymax), xlabel="Threshold probability", ylabel="Net benefit")
    ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.9)
    return _save(fig, path)


def render_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``roc.png``, ``calibration.png`` and ``decision_curve.png`` into ``out_dir``.

    6 x 4.5 in at 110 dpi, Okabe-Ito colours. Returns file name -> path. A multi-class report
    gets ``roc.png`` (one-vs-rest per class), ``confusion.png`` and ``calibration.png`` (top-label).
    """
    if is_multiclass(report):
        from experiments.report_multiclass import render_multiclass_plots

        return render_multiclass_plots(report, out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "roc.png": _plot_roc(report, out_dir / "roc.png"),
        "calibration.png": _plot_calibration(report, out_dir / "calibration.png"),
        "decision_curve.png": _plot_decision_curve(report, out_dir / "decision_curve.png"),
    }


# ---------------------------------------------------------------- all artifacts


def write_report_artifacts(report: Mapping[str, Any], meta: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, the three plots, model_card.md and report.html; returns file name -> path.

    The plots are those of :func:`render_plots` (for a multi-class report: roc, confusion, calibration).

    ``report.json`` holds exactly the bytes hashed by :func:`report_sha256`. A report holding
    NaN or infinity raises ``ValueError`` before anything is written.
    """
    data = canonical_json(report)  # refuses NaN/inf first
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"report.json": out_dir / "report.json"}
    paths["report.json"].write_bytes(data)
    plots = render_plots(report, out_dir)
    paths.update(plots)
    paths["model_card.md"] = out_dir / "model_card.md"
    paths["model_card.md"].write_text(model_card(report, meta), encoding="utf-8")
    paths["report.html"] = out_dir / "report.html"
    paths["report.html"].write_text(render_html(report, meta, plots), encoding="utf-8")
    return paths
