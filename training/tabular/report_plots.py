"""The binary risk model's report plots: ROC, calibration and decision curve."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.report_plots import (
    MIN_BIN_N_HOSPITAL,
    OVERALL_COLOUR,
    float_array,
    hospital_cells,
    line_style,
    new_axes,
    no_data,
    plot_roc_curves,
    save_figure,
)
from training.report_render import NA, ci_text, finite, int_text, num_text

__all__ = ["render_plots"]


def _plot_roc(report: Mapping[str, Any], path: Path) -> Path:
    curves = [(f"Overall (n={int_text((report.get('overall') or {}).get('n'))})", report.get("overall") or {}, {"color": OVERALL_COLOUR, "linewidth": 2.2, "zorder": 5})]
    curves += [(h, cell, {**line_style(i), "linewidth": 1.2, "alpha": 0.9}) for i, (h, cell) in enumerate(hospital_cells(report))]

    def label(name: str, cell: Mapping[str, Any]) -> str:
        ci = ci_text(cell.get("auroc_ci95"), 2)
        return f"{name}: AUROC {num_text(cell.get('auroc'))}" + (f" ({ci})" if ci != NA else "")

    return plot_roc_curves("ROC curve", [(label(name, cell), cell.get("roc") or {}, style) for name, cell, style in curves], path)


def _plot_calibration(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    slope, intercept = num_text(overall.get("calibration_slope"), 2), num_text(overall.get("calibration_intercept"), 2)
    fig, ax = new_axes(f"Calibration: slope {slope}, intercept {intercept}, ECE {num_text(overall.get('ece'), 3)}")
    top = 0.0
    bins = [b for b in overall.get("calibration_curve") or [] if finite(b.get("observed")) is not None and (finite(b.get("n")) or 0) > 0]
    hospitals = hospital_cells(report)
    for i, (h, cell) in enumerate(hospitals):
        hb = [b for b in cell.get("calibration_curve") or [] if finite(b.get("observed")) is not None and (finite(b.get("n")) or 0) >= MIN_BIN_N_HOSPITAL]
        if len(hb) >= 2:
            x, y = float_array([b.get("mean_predicted") for b in hb]), float_array([b.get("observed") for b in hb])
            ax.plot(x, y, marker="o", markersize=2.5, linewidth=0.9, alpha=0.75, label=h, **line_style(i))
            top = max(top, float(np.nanmax(x)), float(np.nanmax(y)))
    if bins:
        x, y = float_array([b.get("mean_predicted") for b in bins]), float_array([b.get("observed") for b in bins])
        n = float_array([b.get("n") for b in bins])
        sizes = 18 + 260 * n / np.nanmax(n)
        ax.plot(x, y, color=OVERALL_COLOUR, linewidth=1.4, zorder=5)
        ax.scatter(x, y, s=sizes, facecolor="#0072B2", edgecolor="white", linewidth=0.8, alpha=0.9, zorder=6,
                   label="Overall (point size ∝ patients in bin)")
        top = max(top, float(np.nanmax(x)), float(np.nanmax(y)))
    else:
        no_data(ax)
    lim = 1.0 if top <= 0 else min(1.0, max(0.1, math.ceil(top * 1.1 / 0.05) * 0.05))
    ax.plot([0, lim], [0, lim], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Perfect calibration", zorder=1)
    ax.set(xlim=(0, lim), ylim=(0, lim), xlabel="Predicted risk (mean in bin)", ylabel="Observed event rate")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper left", fontsize=7, frameon=True, framealpha=0.9)
    return save_figure(fig, path)


def _plot_decision_curve(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    dc = overall.get("decision_curve") or {}
    t, model, treat_all = float_array(dc.get("threshold")), float_array(dc.get("model")), float_array(dc.get("treat_all"))
    thresholds = [float(x) for x in report.get("thresholds") or [] if finite(x) is not None]
    ok = len(t) >= 2 and len(model) == len(t)
    prevalence = finite(overall.get("prevalence"))
    gains = model[np.isfinite(model)] if ok else np.array([])
    # y: from slightly below "treat none" (0) up to the prevalence, the most any strategy can gain.
    ymax = prevalence if prevalence and prevalence > 0 else (float(gains.max()) if gains.size and gains.max() > 0 else 0.05)
    ymin = -0.15 * ymax
    # x: up to where the model's net benefit fades out (below 5% of the attainable), and past the
    # reported thresholds; not the whole 0..1 grid, where every curve is at or below zero.
    xmax = 1.0
    if ok:
        useful = t[np.isfinite(model) & (model > 0.05 * ymax)]
        reach = max([1.25 * float(useful.max()) if useful.size else 0.0] + [1.5 * x for x in thresholds] + [0.3])
        xmax = min(float(np.nanmax(t)), math.ceil(round(reach * 10, 6)) / 10)
    fig, ax = new_axes("Decision curve: net benefit")
    if ok:
        ax.plot(t, model, color="#0072B2", linewidth=2.0, label="Model", zorder=5)
        if len(treat_all) == len(t):
            ax.plot(t, treat_all, color="#D55E00", linestyle="--", linewidth=1.3, label="Treat all")
    else:
        no_data(ax)
    ax.axhline(0.0, color="#57606a", linewidth=1.1, label="Treat none")
    for i, thr in enumerate(thresholds):
        ax.axvline(thr, color="#b0b0b0", linestyle=":", linewidth=0.9, label=None if i else "Reported thresholds")
    ax.set(xlim=(0, xmax), ylim=(ymin, 1.08 * ymax), xlabel="Threshold probability", ylabel="Net benefit")
    ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.9)
    return save_figure(fig, path)


def render_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``roc.png``, ``calibration.png`` and ``decision_curve.png`` into ``out_dir``.

    6 x 4.5 in at 110 dpi, Okabe-Ito colours. Returns file name -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "roc.png": _plot_roc(report, out_dir / "roc.png"),
        "calibration.png": _plot_calibration(report, out_dir / "calibration.png"),
        "decision_curve.png": _plot_decision_curve(report, out_dir / "decision_curve.png"),
    }
