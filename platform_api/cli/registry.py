"""``bioverse registry``: list and show versions, read a report, approve, reject, promote, roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from platform_api.cli.access import KeyOpt, ModelOpt, UriOpt, api_session, open_registry, principal
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out
from platform_api.cli.registry_validate import registry_validate

if TYPE_CHECKING:
    from experiments.review_records import Decision, VersionInfo
    from platform_api.reviews import ReviewService

__all__ = ["registry_app"]

registry_app = typer.Typer(help="Registered model versions: review (approve, reject), promote, roll back.", no_args_is_help=True)


def _reviews(model: str | None, tracking_uri: str | None) -> tuple[ReviewService, str]:
    """The review-decision service on the registry (the API and the review page decide through it too)."""
    from platform_api.reviews import ReviewService

    registry, name = open_registry(model, tracking_uri)
    return ReviewService(registry), name


def _print_decision(decision: Decision) -> None:
    before = f" (was {decision.previous})" if decision.previous and decision.action in ("promote", "rollback") else ""
    out.print(f"[bold green]{decision.outcome}[/] {escape(f'{decision.name} version {decision.version}{before} by {decision.actor}')} "
              f"at {decision.at}", highlight=False)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@registry_app.command("list")
@one_line_errors
def registry_list(model: ModelOpt = None, tracking_uri: UriOpt = None) -> None:
    """List a model's versions, newest first: review status, validation, aliases."""
    from rich.table import Table

    registry, name = open_registry(model, tracking_uri)
    table = Table(title=name, title_justify="left", box=None, pad_edge=False, padding=(0, 1))
    for column in ("v", "created", "review", "report", "AUROC", "slope", "eps", "aliases", "launcher", "reviewer", "warning"):
        folds = column in ("aliases", "launcher", "reviewer", "warning")
        table.add_column(column, justify="right" if column in ("v", "AUROC", "slope", "eps") else "left",
                         no_wrap=not folds, overflow="fold", min_width=10 if column == "aliases" else None)
    for v in registry.versions(name):
        table.add_row(v.version, v.created.strftime("%Y-%m-%d"), v.review_status, v.validation_status, _fmt(v.auroc),
                      _fmt(v.calibration_slope), _fmt(v.epsilon), ",".join(v.aliases) or "-", v.launched_by or "?",
                      v.decided_by or "-", "; ".join(w for w in (v.gate_warning, v.quality_warning) if w) or "-")
    out.print(table, markup=False)


def _print_decision_tags(tags: dict[str, str]) -> None:
    """The version's decision rule and its rates on the test part, from its tags."""
    at = ", ".join(f"{k} {tags[f'validation.decision_{k}']}" for k in ("sensitivity", "specificity", "balanced_accuracy")
                   if f"validation.decision_{k}" in tags)
    out.print(f"  decision: {tags['decision_rule']} threshold {tags.get('decision_threshold', 'none (class scale)')} "
              f"({tags.get('decision_source', '?')})" + (f"; on the test part: {at}" if at else ""),
              highlight=False, markup=False)


def _print_warnings(v: VersionInfo) -> None:
    if v.gate_warning:
        out.print(f"  WARNING: {v.gate_warning}", highlight=False, markup=False, style="bold red")
    if v.quality_warning:
        out.print(f"  QUALITY WARNING: {v.quality_warning}", highlight=False, markup=False, style="bold yellow")


@registry_app.command("show")
@one_line_errors
def registry_show(version: Annotated[str, typer.Argument(help="The version number.")], model: ModelOpt = None,
                  tracking_uri: UriOpt = None) -> None:
    """Show a version: its tags, validation summary and where its HTML report is."""
    registry, name = open_registry(model, tracking_uri)
    v = registry.show(name, version)
    out.print(f"{name} version {v.version} ({v.review_status}; aliases: {', '.join(v.aliases) or 'none'})",
              highlight=False, markup=False, style="bold")
    _print_warnings(v)
    out.print(f"  experiment {v.experiment or '?'}, run {v.run_id or '?'}, launched by {v.launched_by or '?'}, "
              f"created {v.created.isoformat(timespec='seconds')}", highlight=False, markup=False)
    sha = registry.report_sha256(name, version)
    out.print(f"  validation {v.validation_status}: AUROC {v.auroc if v.auroc is not None else 'n/a'}, calibration slope "
              f"{v.calibration_slope if v.calibration_slope is not None else 'n/a'}, epsilon "
              f"{v.epsilon if v.epsilon is not None else 'n/a'}", highlight=False)
    if "decision_rule" in v.tags:
        _print_decision_tags(v.tags)
    if sha is not None:
        out.print(f"  report sha256 {sha}" + ("" if sha == v.report_sha256 else
                                               f" [bold red](registered {v.report_sha256 or 'none'}: STALE)[/]"),
                  highlight=False)
        out.print(f"  HTML report: {registry.report_html_uri(name, version)}", highlight=False, markup=False)
    else:
        out.print("  no validation report (validation/report.json) in the version's run: it cannot be approved",
                  highlight=False)
    if v.decided_by:
        out.print(f"  {v.review_status} by {v.decided_by} at {v.decided_at}: {v.rationale}", highlight=False, markup=False)
    out.print("  tags:", highlight=False)
    for key, value in sorted(v.tags.items()):
        out.print(f"    {key} = {value}", highlight=False, markup=False)


@registry_app.command("report")
@one_line_errors
def registry_report(
    version: Annotated[str, typer.Argument(help="The version number.")],
    output: Annotated[Path | None, typer.Option(help="Folder for report.json and report.html "
                                                     "(default: <data dir>/review/<model>-v<version>).")] = None,
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Fetch a version's validation report to read, and your read receipt (approval needs it)."""
    from experiments.settings import get_settings

    who = principal(api_key, "clinical_validator", "admin", "data_scientist")
    registry, name = open_registry(model, tracking_uri)
    read = registry.read_report(name, version, who.identity)
    if read is None:
        raise CliInputError(f"{name} version {version} has no validation report: it cannot be approved")
    report, receipt = read
    folder = output or get_settings().data_dir / "review" / f"{name}-v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    html = registry.report_html(name, version)
    if html is not None:
        (folder / "report.html").write_text(html)
    info = registry.show(name, version)
    if info.quality_warning:
        out.print(f"QUALITY WARNING: {info.quality_warning}", highlight=False, markup=False, style="bold yellow")
    out.print(f"Report of {name} version {version}: {folder / ('report.html' if html is not None else 'report.json')}",
              highlight=False, markup=False)
    out.print(f"Read receipt (valid 4 h, yours only): {receipt}", highlight=False, markup=False)


@registry_app.command("approve")
@one_line_errors
def registry_approve(
    version: Annotated[str, typer.Argument(help="The version number.")],
    rationale: Annotated[str, typer.Option(help="Why (at least 20 characters); stored with the version.")],
    receipt: Annotated[str, typer.Option("--receipt", help="Your read receipt of the report (`bioverse registry report`).")],
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Approve a pending version (it may then be promoted); the audit log records it."""
    who = principal(api_key, "clinical_validator")
    reviews, name = _reviews(model, tracking_uri)
    with api_session() as session:
        _print_decision(reviews.approve(session, who, name, version, rationale=rationale, receipt=receipt))


@registry_app.command("reject")
@one_line_errors
def registry_reject(
    version: Annotated[str, typer.Argument(help="The version number.")],
    rationale: Annotated[str, typer.Option(help="Why (at least 20 characters); stored with the version.")],
    receipt: Annotated[str | None, typer.Option("--receipt", help="Your read receipt of the report, if you read one.")] = None,
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Reject a pending version (it can never be promoted); the audit log records it."""
    who = principal(api_key, "clinical_validator")
    reviews, name = _reviews(model, tracking_uri)
    with api_session() as session:
        _print_decision(reviews.reject(session, who, name, version, rationale=rationale, receipt=receipt))


registry_app.command("validate")(registry_validate)


@registry_app.command("promote")
@one_line_errors
def registry_promote(
    version: Annotated[str, typer.Argument(help="An approved version.")],
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Give an approved version the production alias (serving follows it)."""
    who = principal(api_key, "clinical_validator")
    reviews, name = _reviews(model, tracking_uri)
    with api_session() as session:
        _print_decision(reviews.promote(session, who, name, version))


@registry_app.command("rollback")
@one_line_errors
def registry_rollback(
    to: Annotated[str | None, typer.Option("--to", help="An approved version (default: the previous production one).")] = None,
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Move production back to the previous approved version (or to --to); admins only."""
    who = principal(api_key, "admin")
    reviews, name = _reviews(model, tracking_uri)
    with api_session() as session:
        _print_decision(reviews.rollback(session, who, name, to))
