"""The multi-class image model's report plots: one-vs-rest ROC, confusion matrix, top-label calibration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.imaging.report import class_cells
from training.report_plots import (
    FIG_SIZE,
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
from training.report_render import NA, ci_text, finite, int_text, num_text, pct_text

__all__ = ["render_multiclass_plots"]


def _classes(report: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in report.get("classes") or list(class_cells(report.get("overall") or {}))]


def _plot_roc(report: Mapping[str, Any], path: Path) -> Path:
    overall = report.get("overall") or {}

    def label(name: str, m: Mapping[str, Any]) -> str:
        ci = ci_text(m.get("auroc_ci95"), 2)
        return f"{name} (n={int_text(m.get('support'))}): {num_text(m.get('auroc'))}" + (f" ({ci})" if ci != NA else "")

    per_class = [(name, class_cells(overall).get(name) or {}) for name in _classes(report)]
    curves = [(label(name, m), m.get("roc") or {}, {"linewidth": 1.6, **line_style(i)}) for i, (name, m) in enumerate(per_class)]
    return plot_roc_curves(f"ROC curves, one-vs-rest: macro AUROC {num_text(overall.get('auroc'))}", curves, path,
                            legend={"title": "Class: AUROC (95% CI)", "title_fontsize": 7})


def _plot_confusion(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    classes = _classes(report)
    k = len(classes)
    overall = report.get("overall") or {}
    counts = np.asarray(overall.get("confusion") or np.zeros((0, 0)), dtype=float).reshape(k, k) if k else np.zeros((0, 0))
    fig, ax = new_axes(f"Confusion matrix: accuracy {pct_text(overall.get('accuracy'))}, balanced {pct_text(overall.get('balanced_accuracy'))}")
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
        no_data(ax)
    return save_figure(fig, path)


def _plot_calibration(report: Mapping[str, Any], path: Path) -> Path:
    import numpy as np

    overall = report.get("overall") or {}
    fig, ax = new_axes(f"Top-label calibration: ECE {num_text(overall.get('ece'))}")
    k = len(_classes(report))
    low = 1.0 / k if k else 0.0  # the confidence of the predicted class is at least 1/K

    def usable(cell: Mapping[str, Any], min_n: float) -> tuple[Any, Any, Any]:
        bins = [b for b in cell.get("calibration_curve") or []
                if finite(b.get("accuracy")) is not None and (finite(b.get("n")) or 0) >= min_n]
        return tuple(float_array([b.get(key) for b in bins]) for key in ("mean_confidence", "accuracy", "n"))  # type: ignore[return-value]

    for i, (h, cell) in enumerate(hospital_cells(report)):
        x, y, _ = usable(cell, MIN_BIN_N_HOSPITAL)
        if len(x) >= 2:
            ax.plot(x, y, marker="o", markersize=2.5, linewidth=0.9, alpha=0.75, label=h, **line_style(i))
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
        no_data(ax)
    lo = max(0.0, math.floor(round(low * 10 - 0.25, 6)) / 10)  # a margin below the lowest point, on a 0.1 grid
    ax.plot([lo, 1], [lo, 1], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Perfect calibration", zorder=1)
    ax.set(xlim=(lo, 1), ylim=(lo, 1.01), xlabel="Confidence (probability of the predicted class, mean in bin)",
           ylabel="Accuracy (share predicted correctly)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="lower right" if above else "upper left", fontsize=7, frameon=True, framealpha=0.9)
    return save_figure(fig, path)


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
