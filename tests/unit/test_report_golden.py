"""Both renderers produce the exact model card and HTML page captured before the report redesign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.report import model_card, render_html

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
