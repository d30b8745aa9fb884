"""Both renderers produce the exact model card and HTML page captured before the report redesign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.report import model_card, render_html, write_report_artifacts
from training.modality import REGISTRY
from training.report_render import ReportRenderer, report_modality

GOLDEN = Path(__file__).parent / "data" / "report_golden"
#: Plots as the page embeds them: a known plot out of order, a ``.png`` name and an unknown name.
IMAGES = {"extra": b"extra-bytes", "calibration.png": b"cal-bytes", "roc": b"roc-bytes"}


def _load(name: str) -> tuple[dict, dict]:
    return (json.loads((GOLDEN / f"{name}_report.json").read_text()),
            json.loads((GOLDEN / f"{name}_meta.json").read_text()))


@pytest.mark.parametrize("name", ["tabular", "multiclass"])
def test_model_card_is_unchanged(name: str) -> None:
    report, meta = _load(name)
    assert model_card(report, meta) == (GOLDEN / f"{name}_model_card.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["tabular", "multiclass"])
def test_html_page_is_unchanged(name: str) -> None:
    report, meta = _load(name)
    assert render_html(report, meta, IMAGES) == (GOLDEN / f"{name}_report.html").read_text(encoding="utf-8")


class _EchoModality:
    """A modality whose renderer says who rendered what (registered for one test)."""

    def report_renderer(self) -> ReportRenderer:
        return ReportRenderer(model_card=lambda report, meta: f"card by echo: {report['overall']}",
                              render_html=lambda report, meta, images: "<p>echo</p>",
                              render_plots=lambda report, out_dir: {})


ECHO = _EchoModality()


def test_a_report_is_rendered_by_the_modality_that_built_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(REGISTRY, "echo", f"{__name__}:ECHO")
    report = {"modality": "echo", "task": "multiclass", "overall": {"n": 3}}  # the key wins over the task
    assert model_card(report, {}) == "card by echo: {'n': 3}"
    written = write_report_artifacts(report, {}, tmp_path)
    assert set(written) == {"report.json", "model_card.md", "report.html"}
    assert written["report.html"].read_text() == "<p>echo</p>"


def test_a_report_from_before_the_modality_key_is_read_by_its_task() -> None:
    tabular, meta = _load("tabular")
    multiclass, _ = _load("multiclass")
    assert "modality" not in tabular and "modality" not in multiclass
    assert report_modality(tabular) == "tabular" and report_modality(multiclass) == "images"
    assert model_card({**tabular, "modality": "tabular"}, meta).startswith("# Model card: cardiac-risk v7")
