"""Plot helpers every validation report draws with: matplotlib's object API on an Agg canvas (imported on call)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.report_render import finite

__all__ = ["FIG_DPI", "FIG_SIZE", "MIN_BIN_N_HOSPITAL", "OVERALL_COLOUR", "PALETTE", "float_array", "hospital_cells",
           "line_style", "new_axes", "no_data", "plot_roc_curves", "save_figure"]


FIG_SIZE = (6.0, 4.5)  # inches
FIG_DPI = 110
#: Okabe-Ito palette (colour-blind safe); black is kept for the overall line.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
OVERALL_COLOUR = "#000000"


#: Per-hospital calibration lines skip bins with fewer patients (noise); overall shows all bins.
MIN_BIN_N_HOSPITAL = 20


def float_array(values: Any) -> Any:
    import numpy as np

    return np.array([math.nan if finite(v) is None else float(v) for v in (values or [])], dtype=float)


def new_axes(title: str) -> tuple[Any, Any]:
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


def save_figure(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=FIG_DPI)
    fig.clear()
    return path


def hospital_cells(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Per-hospital cells to draw beside the overall curve; none when one hospital (it is the overall)."""
    cells = (report.get("subgroups") or {}).get("hospital") or {}
    return [(str(h), cells[h]) for h in cells] if len(cells) > 1 else []


def line_style(i: int) -> dict[str, Any]:
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": ("-", "--", ":", "-.")[(i // len(PALETTE)) % 4]}


def no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "not enough data", ha="center", va="center", transform=ax.transAxes, color="#57606a")


def plot_roc_curves(title: str, curves: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]], path: Path,
                     legend: Mapping[str, Any] | None = None) -> Path:
    """ROC plot of ``(label, roc, line style)`` curves beside the chance line (every modality's ROC plot).

    A curve with fewer than two points is left out; ``legend`` adds to the legend's arguments (e.g. a title).
    """
    fig, ax = new_axes(title)
    ax.plot([0, 1], [0, 1], color="#9a9a9a", linestyle="--", linewidth=0.9, label="Chance (AUROC 0.5)")
    drawn = 0
    for label, roc, style in curves:
        fpr, tpr = float_array(roc.get("fpr")), float_array(roc.get("tpr"))
        if len(fpr) < 2 or len(fpr) != len(tpr):
            continue
        ax.plot(fpr, tpr, label=label, **style)
        drawn += 1
    if not drawn:
        no_data(ax)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false positive rate)", ylabel="Sensitivity (true positive rate)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.9, **(legend or {}))
    return save_figure(fig, path)
