"""A validation report's artifacts (report.json, plots, model card, HTML), rendered by the modality that built it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.modality import get_modality
from training.report_render import ReportRenderer, canonical_json, report_modality

__all__ = ["model_card", "render_html", "render_plots", "renderer_for", "write_report_artifacts"]


def renderer_for(report: Mapping[str, Any]) -> ReportRenderer:
    """The renderer of the modality that built ``report`` (:func:`training.report_render.report_modality`).

    Raises:
        UnknownModalityError: the report names a modality no longer registered.
    """
    return get_modality(report_modality(report)).report_renderer()


def model_card(report: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The model card as Markdown (plots linked as the PNG files written beside it).

    ``meta`` (all keys optional; missing ones render as "n/a") is described in docs/validation.md.
    """
    return renderer_for(report).model_card(report, meta)


def render_html(report: Mapping[str, Any], meta: Mapping[str, Any],
                images: Mapping[str, str | bytes | Path] | None = None) -> str:
    """One self-contained HTML page: model card, metrics, subgroups and the plots inline.

    ``images`` maps a plot name (``"roc"`` or ``"roc.png"``) to a base64 PNG string, raw PNG
    ``bytes``, or a ``Path`` to read (so :func:`render_plots`' result can be passed as is). The
    modality's plots come first, in its order; other names follow, captioned with their name.
    All text from ``report`` and ``meta`` is HTML-escaped.
    """
    return renderer_for(report).render_html(report, meta, images)


def render_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the modality's plots (tabular: ROC, calibration, decision curve; images: one-vs-rest ROC,
    confusion matrix, top-label calibration) into ``out_dir``; returns file name -> path."""
    return renderer_for(report).render_plots(report, Path(out_dir))


def write_report_artifacts(report: Mapping[str, Any], meta: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, the plots, model_card.md and report.html; returns file name -> path.

    ``report.json`` holds exactly the bytes hashed by :func:`training.report_render.report_sha256`.
    A report holding NaN or infinity raises ``ValueError`` before anything is written.
    """
    data = canonical_json(report)  # refuses NaN/inf first
    renderer = renderer_for(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"report.json": out_dir / "report.json"}
    paths["report.json"].write_bytes(data)
    plots = renderer.render_plots(report, out_dir)
    paths.update(plots)
    paths["model_card.md"] = out_dir / "model_card.md"
    paths["model_card.md"].write_text(renderer.model_card(report, meta), encoding="utf-8")
    paths["report.html"] = out_dir / "report.html"
    paths["report.html"].write_text(renderer.render_html(report, meta, plots), encoding="utf-8")
    return paths
