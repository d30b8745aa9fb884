"""The validators' review page: pending versions, each report beside production's, and the decision forms."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Cookie, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy.orm import Session

from experiments.errors import ReviewError
from experiments.registry import ModelRegistry
from experiments.review_records import VersionInfo
from platform_api.auth import Principal, authenticate, issue_token_for, signing_key
from platform_api.db import DatabaseUrl, session_factory
from platform_api.deps import RateLimitsDep, RegistryDep, ReviewsDep, client_address
from platform_api.errors import NotAuthenticated
from platform_api.review_rollout import ROLLOUT_ACTIONS, rollout_action, rollout_section
from platform_api.reviews import ReviewService
from platform_api.settings import get_settings

__all__ = ["router"]

router = APIRouter(prefix="/review", include_in_schema=False)
COOKIE = "bioverse_review"
READERS = ("clinical_validator", "admin", "data_scientist")

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2933;background:#f5f7fa}
header{background:#243b53;color:#fff;padding:.7rem 1.5rem;display:flex;justify-content:space-between;align-items:center}
header a{color:#d9e2ec;text-decoration:none;margin-left:1rem}
main{max-width:1200px;margin:1.2rem auto;padding:0 1.5rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;background:#fff;width:100%;margin:.4rem 0}
th,td{padding:.45rem .6rem;border-bottom:1px solid #e4e7eb;text-align:left}th{background:#eef2f7;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.7rem;font-size:.8rem;font-weight:600}
.pending{background:#fff3c4;color:#8d6e00}.approved{background:#d6f5e3;color:#0b6b3a}.rejected{background:#fde2e1;color:#a61b1b}
.alias{background:#dceefb;color:#0b4f8a}
.flash{padding:.7rem 1rem;border-radius:.4rem;margin:.6rem 0}.ok{background:#d6f5e3}.err{background:#fde2e1}
form.decide{background:#fff;padding:1rem;border:1px solid #d9e2ec;border-radius:.5rem}
textarea{width:100%;min-height:6rem;font:inherit;padding:.5rem;box-sizing:border-box}
button{font:inherit;padding:.45rem 1rem;border-radius:.35rem;border:1px solid #829ab1;background:#fff;cursor:pointer;margin-right:.5rem}
button.primary{background:#0b6b3a;color:#fff;border-color:#0b6b3a}button.danger{background:#a61b1b;color:#fff;border-color:#a61b1b}
iframe{width:100%;height:1400px;border:1px solid #d9e2ec;background:#fff}
.muted{color:#627d98;font-size:.85rem}code{font-size:.85rem}
.warn{background:#fff3c4;border-left:6px solid #b7791f;padding:.7rem 1rem;margin:.6rem 0;font-weight:600}
.gate{background:#fde2e1;border-left:6px solid #a61b1b;padding:.7rem 1rem;margin:.6rem 0;font-weight:600}
"""

_BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }} · BioVerse review</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{{ css }}</style></head><body>
<header><strong>BioVerse · model review</strong><span>{% if who %}{{ who.name or "unnamed key" }} · {{ who.role }} {{ who.key_id }}
<a href="/review">versions</a><form method="post" action="/review/logout" style="display:inline">
<input type="hidden" name="csrf" value="{{ csrf }}"><button>Sign out</button></form>{% endif %}</span></header>
<main>{% if flash %}<div class="flash {{ flash_kind }}" role="status">{{ flash }}</div>{% endif %}{{ body }}</main></body></html>"""

_LOGIN = """<h1>Sign in</h1><form method="post" action="/review/login" class="decide" style="max-width:32rem">
<p><label for="key">API key (<code>bv_…</code>) of a clinical validator, admin or data scientist</label></p>
<input id="key" name="api_key" type="password" autocomplete="off" style="width:100%;padding:.5rem" required>
<p><button class="primary" type="submit">Sign in</button></p></form>"""

_LIST = """<h1>Pending review</h1>
{% if not pending %}<p>No version of any model awaits review.</p>{% else %}
<table><tr><th>model</th><th>version</th><th>AUROC</th><th>validation</th><th>launched by</th><th>registered</th><th>warning</th></tr>
{% for v in pending %}<tr><td>{{ v.name }}</td><td><a href="/review/{{ v.name|urlencode }}/{{ v.version }}">{{ v.name }} version {{ v.version }}</a></td>
<td class="n">{{ fmt(v.auroc) }}</td><td>{{ v.validation_status }}</td><td>{{ v.launched_by or "n/a" }}</td>
<td>{{ v.created.strftime("%Y-%m-%d %H:%M") }}</td><td>{{ v.quality_warning or "" }}</td></tr>{% endfor %}</table>{% endif %}
{% for g in gated %}<div class="gate" role="alert">{{ g.name }} version {{ g.version }}: {{ g.gate_warning }}</div>{% endfor %}
<h1>{{ name }}: versions</h1>
{% if not versions %}<p>No registered versions yet.</p>{% else %}
<table><tr><th>version</th><th>review</th><th>aliases</th><th>AUROC</th><th>calibration slope</th><th>epsilon</th>
<th>validation</th><th>launched by</th><th>registered</th></tr>
{% for v in versions %}<tr><td><a href="/review/{{ v.name|urlencode }}/{{ v.version }}">version {{ v.version }}</a></td>
<td><span class="badge {{ v.review_status }}">{{ v.review_status }}</span></td>
<td>{% for a in v.aliases %}<span class="badge alias">{{ a }}</span> {% endfor %}</td>
<td class="n">{{ fmt(v.auroc) }}</td><td class="n">{{ fmt(v.calibration_slope) }}</td><td class="n">{{ fmt(v.epsilon) }}</td>
<td>{{ v.validation_status }}</td><td>{{ v.launched_by or "n/a" }}</td><td>{{ v.created.strftime("%Y-%m-%d %H:%M") }}</td></tr>{% endfor %}
</table>{% endif %}"""

_VERSION = """{% if v.quality_warning %}<div class="warn" role="alert" id="quality-warning">Quality warning: {{ v.quality_warning }}</div>{% endif %}
{% if v.gate_warning %}<div class="gate" role="alert" id="gate-warning">{{ v.gate_warning }}</div>{% endif %}
<h1>{{ v.name }} version {{ v.version }} <span class="badge {{ v.review_status }}">{{ v.review_status }}</span>
{% for a in v.aliases %}<span class="badge alias">{{ a }}</span> {% endfor %}</h1>
<p class="muted">experiment {{ v.experiment or "n/a" }} · run {{ v.run_id or "n/a" }} · launched by {{ v.launched_by or "n/a" }}
{% if v.decided_by %} · decided by {{ v.decided_by }} at {{ v.decided_at }}: “{{ v.rationale }}”{% endif %}</p>
<h2>Compared with production</h2>
<table><tr><th>metric</th><th>version {{ v.version }}</th><th>{% if prod %}production: version {{ prod.version }}{% else %}production{% endif %}</th></tr>
{% for label, key in rows %}<tr><td>{{ label }}</td><td class="n">{{ cell(report, key) }}</td>
<td class="n">{% if prod_report %}{{ cell(prod_report, key) }}{% else %}none{% endif %}</td></tr>{% endfor %}</table>
<h2>Validation report</h2>{% if sha %}<iframe title="validation report" src="/review/{{ v.name|urlencode }}/{{ v.version }}/report.html"></iframe>
{% else %}<p>This version has no validation report: it cannot be approved.</p>{% endif %}
<p><a href="/review/{{ v.name|urlencode }}/{{ v.version }}/monitoring">Live monitoring: drift of its served predictions</a></p>
{% if can_decide %}<h2>Decision</h2>
<form method="post" action="/review/{{ v.name|urlencode }}/{{ v.version }}/decision" class="decide">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="receipt" value="{{ receipt or '' }}">
<p><label for="rationale">Rationale (at least 20 characters; stored with the version and in the audit log)</label></p>
<textarea id="rationale" name="rationale" required minlength="20" maxlength="5000"></textarea>
<p class="muted">You are deciding on the report with SHA-256 <code>{{ sha or "none" }}</code>.</p>
<button class="primary" name="action" value="approve" type="submit">Approve</button>
<button class="danger" name="action" value="reject" type="submit">Reject</button></form>{% endif %}
{% if can_promote %}<form method="post" action="/review/{{ v.name|urlencode }}/{{ v.version }}/promote" class="decide" style="margin-top:1rem">
<input type="hidden" name="csrf" value="{{ csrf }}"><p>Approved. Give it the <code>production</code> alias: serving and the API switch to it.</p>
<button class="primary" type="submit">Promote to production</button></form>{% endif %}
{{ rollout }}"""

_ROWS = (("patients (held-out)", "n"), ("events", "positives"), ("AUROC", "auroc"), ("AUROC 95% CI", "auroc_ci95"),
         ("AUPRC", "auprc"), ("calibration slope", "calibration_slope"), ("calibration intercept", "calibration_intercept"),
         ("Brier score", "brier"), ("ECE", "ece"))
#: Rows for a multi-class report (``training.imaging.validation``; ``report["task"] == "multiclass"``).
_MULTICLASS_ROWS = (("images (held-out)", "n"), ("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                    ("macro AUROC (one-vs-rest)", "auroc"), ("macro AUROC 95% CI (conservative)", "auroc_ci95"),
                    ("ECE (top-label)", "ece"), ("Brier score (multi-class)", "brier"), ("log loss", "log_loss"))


def _rows(report: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The comparison rows for the version's report: multi-class metrics or the binary ones."""
    return _MULTICLASS_ROWS if (report or {}).get("task") == "multiclass" else _ROWS


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return "–".join(_fmt(v) for v in value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(report: dict[str, Any] | None, key: str) -> str:
    return _fmt(((report or {}).get("overall") or {}).get(key)) if report else "n/a"


@functools.cache
def _jinja() -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(fmt=_fmt, cell=_cell)
    return env


def _render(title: str, body: str, *, who: Principal | None = None, csrf: str = "", flash: str | None = None,
            flash_kind: str = "ok", status: int = 200, **context: Any) -> HTMLResponse:
    env = _jinja()
    inner = env.from_string(body).render(who=who, csrf=csrf, **context)
    page = env.from_string(_BASE).render(title=title, css=_CSS, who=who, csrf=csrf, flash=flash, flash_kind=flash_kind,
                                         body=Markup(inner))
    return HTMLResponse(page, status_code=status, headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; "
                                   "form-action 'self'; frame-ancestors 'self'",
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def _csrf(token: str) -> str:
    """The form token bound to the session cookie (HMAC with the server's signing key)."""
    return hmac.new(signing_key().encode(), f"csrf:{token}".encode(), hashlib.sha256).hexdigest()


def _who_sync(url: str, token: str) -> Principal:
    with session_factory(url)() as session:
        return authenticate(session, token)


async def _session(url: DatabaseUrl, bioverse_review: Annotated[str | None, Cookie()] = None) -> tuple[Principal, str] | None:
    """The signed-in reader and the CSRF token, or None (signed out, expired, revoked)."""
    if not bioverse_review:
        return None
    try:
        who = await run_in_threadpool(_who_sync, url, bioverse_review)
    except NotAuthenticated:
        return None
    if who.role not in READERS:
        return None
    return who, _csrf(bioverse_review)


SessionCookie = Annotated[tuple[Principal, str] | None, Depends(_session)]


def _to_login(message: str | None = None) -> RedirectResponse:
    target = "/review/login" + (f"?m={quote(message)}" if message else "")
    return RedirectResponse(target, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(m: str | None = None) -> HTMLResponse:
    """The sign-in form."""
    return _render("Sign in", _LOGIN, flash=m, flash_kind="err")


@router.post("/login")
def login(request: Request, url: DatabaseUrl, limits: RateLimitsDep, api_key: Annotated[str, Form(max_length=300)]) -> Response:
    """Check the key once; keep a short-lived access token in an HttpOnly cookie. Failed
    sign-ins count against the address's limit of failed key checks (platform_api.ratelimit)."""
    address = client_address(request)
    if limits is not None and (wait := limits.auth_blocked(address)):
        refused = _render("Sign in", _LOGIN, flash=f"too many failed sign-ins from this address; retry in {wait} s",
                          flash_kind="err", status=429)
        refused.headers["Retry-After"] = str(wait)
        return refused
    try:
        with session_factory(url)() as session:
            who = authenticate(session, api_key.strip())
    except NotAuthenticated as err:
        if limits is not None:
            limits.auth_failed(address)
        return _render("Sign in", _LOGIN, flash=str(err), flash_kind="err", status=401)
    if who.role not in READERS:
        return _render("Sign in", _LOGIN, flash=f"role {who.role} has no access to model review", flash_kind="err", status=403)
    token, lifetime = issue_token_for(who)
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(COOKIE, token, max_age=lifetime, httponly=True, samesite="strict", path="/review",
                        secure=get_settings().cookie_secure)
    return response


@router.post("/logout")
def logout(session: SessionCookie, csrf: Annotated[str, Form()] = "") -> Response:
    """Forget the cookie."""
    response = _to_login("signed out")
    response.delete_cookie(COOKIE, path="/review")
    return response


@router.get("", response_class=HTMLResponse)
async def versions_page(session: SessionCookie, reviews: ReviewsDep, m: str | None = None, e: str | None = None) -> Response:
    """Every model's pending versions, then every version of the served model, newest first."""
    if session is None:
        return _to_login()
    who, csrf = session
    name = get_settings().model_name
    overview = await run_in_threadpool(reviews.overview, name)
    return _render("Pending review", _LIST, who=who, csrf=csrf, name=name, flash=m or e,
                   flash_kind="err" if e else "ok", **asdict(overview))


def _version_context(reg: ModelRegistry, name: str, version: str, who: Principal) -> dict[str, Any]:
    info = reg.show(name, version)
    read = reg.read_report(name, version, who.identity)  # the page fetches the report for the reader
    report, receipt = read if read is not None else (None, None)
    sha = receipt.split(".", 1)[0] if receipt else None
    prod = next((v for v in reg.versions(name) if "production" in v.aliases), None)
    prod_report = reg.report(name, prod.version) if prod is not None and prod.version != version else (report if prod else None)
    return {"v": info, "report": report, "sha": sha, "receipt": receipt, "prod": prod, "prod_report": prod_report}


@router.get("/{name}/{version}", response_class=HTMLResponse)
async def version_page(name: str, version: str, session: SessionCookie, reg: RegistryDep, m: str | None = None,
                       e: str | None = None) -> Response:
    """One version: comparison with production, the decision forms, the full report."""
    if session is None:
        return _to_login()
    who, csrf = session
    try:
        context = await run_in_threadpool(_version_context, reg, name, version, who)
    except ReviewError as err:
        return _render("Not found", "<h1>{{ message }}</h1>", who=who, csrf=csrf, message=str(err), status=404)
    info: VersionInfo = context["v"]
    validator = who.role == "clinical_validator"
    context["rollout"] = await run_in_threadpool(  # the rollout section (review_rollout.py)
        rollout_section, _jinja(), name, version, validator=validator, csrf=csrf,
        approved=info.review_status == "approved" and "production" not in info.aliases)
    return _render(f"{name} version {version}", _VERSION, who=who, csrf=csrf, rows=_rows(context["report"]),
                   can_decide=validator and info.review_status == "pending",
                   can_promote=validator and info.review_status == "approved" and "production" not in info.aliases,
                   flash=m or e, flash_kind="err" if e else "ok", **context)


@router.get("/{name}/{version}/report.html", response_class=HTMLResponse)
async def version_report(name: str, version: str, session: SessionCookie, reg: RegistryDep) -> Response:
    """The version's stored HTML report (for the page's frame)."""
    if session is None:
        return _to_login()
    html = await run_in_threadpool(reg.report_html, name, version)
    if html is None:
        return HTMLResponse("<p>No validation report.</p>", status_code=404)
    return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
                                       "Cache-Control": "no-store"})


def _back(name: str, version: str, *, ok: str | None = None, error: str | None = None) -> RedirectResponse:
    query = f"?m={quote(ok)}" if ok else f"?e={quote(error or '')}"
    return RedirectResponse(f"/review/{quote(name)}/{quote(version)}{query}", status_code=303)


async def _validator_action(session: tuple[Principal, str] | None, csrf: str, url: str, action: str,
                            target: tuple[str, str], decide: Callable[[Session, Principal], Any], done: str) -> Response:
    """A form's gate action: the session and its CSRF token checked, validators only,
    decided through the review service; back to the version page with the outcome or the refusal."""
    if session is None or not hmac.compare_digest(session[1], csrf):
        return _to_login("please sign in again")
    who = session[0]
    if who.role != "clinical_validator":
        return HTMLResponse(f"only clinical validators {action} versions", status_code=403)

    def run() -> str:
        with session_factory(url)() as db:
            return str(decide(db, who).outcome)

    try:
        outcome = await run_in_threadpool(run)
    except ReviewError as err:
        return _back(*target, error=str(err))
    return _back(*target, ok=done.format(outcome=outcome))


def _form_decision(reviews: ReviewService, action: str, name: str, version: str, rationale: str,
                   receipt: str) -> Callable[[Session, Principal], Any]:
    """The form's approve or reject (a rejection without a read receipt carries none)."""
    if action == "approve":
        return lambda db, who: reviews.approve(db, who, name, version, rationale=rationale, receipt=receipt)
    return lambda db, who: reviews.reject(db, who, name, version, rationale=rationale, receipt=receipt or None)


@router.post("/{name}/{version}/decision")
async def decide(name: str, version: str, url: DatabaseUrl, session: SessionCookie, reviews: ReviewsDep,
                 action: Annotated[str, Form(pattern="^(approve|reject)$")],
                 rationale: Annotated[str, Form(max_length=5000)],
                 receipt: Annotated[str, Form(max_length=300)] = "",
                 csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    """Approve or reject, through the registry's gate, with the page's read receipt."""
    gate = _form_decision(reviews, action, name, version, rationale, receipt)
    return await _validator_action(session, csrf, url, action, (name, version), gate, f"version {version} {{outcome}}")


@router.post("/{name}/{version}/promote")
async def promote(name: str, version: str, url: DatabaseUrl, session: SessionCookie, reviews: ReviewsDep,
                  csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    """Give an approved version the production alias."""
    return await _validator_action(session, csrf, url, "promote", (name, version),
                                   lambda db, who: reviews.promote(db, who, name, version),
                                   f"version {version} is now production")


@router.post("/{name}/{version}/rollout")
async def rollout(name: str, version: str, url: DatabaseUrl, session: SessionCookie,
                  action: Annotated[str, Form(pattern="^(" + "|".join(ROLLOUT_ACTIONS) + ")$")],
                  csrf: Annotated[str, Form(max_length=64)] = "") -> Response:
    """Start, pause, resume or abort the model's staged rollout (review_rollout.py)."""
    return await _validator_action(session, csrf, url, action, (name, version), rollout_action(action, name, version),
                                   "{outcome}")
