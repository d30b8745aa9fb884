"""The review page's monitoring view: a served version's live drift against its validation reference."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from experiments.errors import ReviewError
from platform_api.deps import RegistryDep
from platform_api.monitoring import get_monitor
from platform_api.review_ui import SessionCookie

__all__ = ["router"]

router = APIRouter(prefix="/review", include_in_schema=False)

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
.alert{color:#b00;font-weight:bold}.ok{color:#070}.note{color:#555}</style></head><body>
<p><a href="/review/{{ name }}/{{ version }}">&larr; {{ name }} version {{ version }}</a> &middot; signed in as {{ who }}</p>
<h1>{{ title }}</h1>
{% if d is none %}<p class="alert">{{ message }}</p>{% else %}
<p>Window: <b>{{ d.window }}</b> recorded predictions (the last {{ d.window_spec.size }}{% if d.window_spec.minutes %},
 within {{ d.window_spec.minutes }} min{% endif %}; minimum {{ d.window_spec.min_predictions }}).
 Alert threshold: PSI &ge; {{ d.threshold }}.</p>
<p>Status: <b>{{ d.status }}</b>.
{% if d.alert %}<span class="alert">Drift alert: {{ d.drifted | join(", ") }}</span>{% elif d.status == "ok" %}
<span class="ok">No drift above the threshold.</span>{% endif %}</p>
{% if d.feature_reference != "ok" %}<p class="note">{{ d.feature_reference }}</p>{% endif %}
{% if d.prediction %}<h2>Prediction score</h2><p class="note">Reference: {{ d.prediction.source }}</p>
<table><tr><th>PSI</th><th>KS (binned)</th><th>KS p</th></tr>
<tr><td>{{ num(d.prediction.psi) }}</td><td>{{ num(d.prediction.ks) }}</td><td>{{ num(d.prediction.ks_p) }}</td></tr></table>
{{ bins(d.prediction) }}{% endif %}
{% if d.features %}<h2>Input features</h2>
<table><tr><th>feature</th><th>kind</th><th>PSI</th><th>KS (binned)</th><th>KS p</th><th>drift</th></tr>
{% for f, c in d.features.items() %}<tr><td>{{ f }}</td><td>{{ c.kind }}</td><td>{{ num(c.psi) }}</td>
<td>{{ num(c.ks) }}</td><td>{{ num(c.ks_p) }}</td>
<td>{% if f in d.drifted %}<span class="alert">yes</span>{% else %}no{% endif %}</td></tr>{% endfor %}</table>
{% for f, c in d.features.items() %}<h3>{{ f }}</h3>{{ bins(c) }}{% endfor %}{% endif %}{% endif %}
</body></html>"""

_BINS = """<table><tr><th>bin</th><th>reference share</th><th>window share</th></tr>
{% for label, r, w in rows %}<tr><td>{{ label }}</td><td>{{ r }}</td><td>{{ w }}</td></tr>{% endfor %}</table>"""


def _num(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"  # None, or a categorical feature's absent KS


@functools.cache
def _env() -> Any:
    import jinja2

    return jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)


def _bins(compared: dict[str, Any]) -> Any:
    from markupsafe import Markup

    r_total, w_total = sum(compared["reference"]) or 1, sum(compared["window"]) or 1
    rows = [(label, f"{r / r_total:.1%}", f"{w / w_total:.1%}")
            for label, r, w in zip(compared["labels"], compared["reference"], compared["window"], strict=False)]
    return Markup(_env().from_string(_BINS).render(rows=rows))


@router.get("/{name}/{version}/monitoring", response_class=HTMLResponse)
async def version_monitoring_page(name: str, version: str, session: SessionCookie, reg: RegistryDep) -> Response:
    """Live drift of a version: PSI and KS per feature and for the score, the window, the alert."""
    if session is None:
        return RedirectResponse("/review/login", status_code=303)
    who = session[0]
    status, drift, message = 200, None, ""
    try:
        await run_in_threadpool(reg.show, name, version)
        drift = await run_in_threadpool(get_monitor().version_drift, name, version)
    except ReviewError as err:
        status, message = 404, str(err)
    html = _env().from_string(_PAGE).render(title=f"Monitoring: {name} version {version}", name=name, version=version,
                                            who=who.name or who.key_id, d=drift, message=message, num=_num, bins=_bins)
    return HTMLResponse(html, status_code=status, headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'", "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff"})
