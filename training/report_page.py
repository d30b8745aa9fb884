"""The HTML page every validation report fills: style, Jinja template with slots, image embedding."""

from __future__ import annotations

import base64
import binascii
import functools
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PAGE_CSS", "PAGE_TEMPLATE", "page_source", "render_page"]

_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
#: The page style of every report page (a modality's page may add to it).
PAGE_CSS = """:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; --warn-bg:#fff8c5; --warn-fg:#7d4e00; }
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
#: modalities' pages: ``css`` (style added to PAGE_CSS), ``subtitle``, ``population``
#: (the subgroup mix tables), ``results`` (after the metrics table, before the plots) and
#: ``subgroup_table`` (the table of one group, inside the loop over ``c.groups``). Filled by :func:`page_source`.
PAGE_TEMPLATE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Validation report: {{ c.title }}</title>
<style>
""" + PAGE_CSS + """${css}</style>
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


def page_source(*, subtitle: str, population: str, results: str, subgroup_table: str, css: str = "") -> str:
    """The Jinja source of a report page: :data:`PAGE_TEMPLATE` with its slots filled."""
    return PAGE_TEMPLATE.substitute(css=css, subtitle=subtitle, population=population, results=results, subgroup_table=subgroup_table)


@functools.cache
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


def render_page(source: str, card: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]],
                 titles: Mapping[str, str], report: Mapping[str, Any], meta: Mapping[str, Any],
                 images: Mapping[str, str | bytes | Path] | None) -> str:
    """Render the page ``source`` with ``card(report, meta)`` and ``images`` (every modality's page).

    Plots named in ``titles`` come first, in its order, captioned with its titles; other names follow,
    captioned with their name.
    """
    images = images or {}
    order = {name: i for i, name in enumerate(titles)}
    keys = sorted(images, key=lambda k: (order.get(k.removesuffix(".png"), len(order)), k))
    shown = [(k, titles.get(k.removesuffix(".png"), k), _image_base64(k, images[k])) for k in keys]
    return str(_jinja_template(source).render(c=card(report, meta), images=shown, created=meta.get("created")))
