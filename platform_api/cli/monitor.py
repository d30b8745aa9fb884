"""``bioverse monitor drift``: a served version's live drift against its validation reference."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from platform_api.cli.access import UriOpt, open_registry
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out

__all__ = ["monitor_app"]

monitor_app = typer.Typer(help="Live model monitoring: drift of served versions against their validation reference.",
                          no_args_is_help=True)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _print(d: dict[str, Any]) -> None:
    from rich.table import Table

    head = f"{d['model']} version {d['version']}: {d['window']} predictions in the window, {d['status']}"
    out.print(escape(head), highlight=False)
    if d["feature_reference"] != "ok":
        out.print(escape(d["feature_reference"]), highlight=False)
    if d["status"] != "ok":
        return
    table = Table(box=None, pad_edge=False, padding=(0, 1))
    for column in ("", "kind", "PSI", "KS", "KS p", "drift"):
        table.add_column(column, justify="left" if column in ("", "kind", "drift") else "right")
    rows = ([("prediction", {"kind": "score", **d["prediction"]})] if d["prediction"] else []) + list((d["features"] or {}).items())
    for name, c in rows:
        table.add_row(name, c["kind"], _fmt(c["psi"]), _fmt(c.get("ks")), _fmt(c.get("ks_p")),
                      "DRIFT" if name in d["drifted"] else "-")
    out.print(table, markup=False)
    verdict = f"ALERT: PSI >= {d['threshold']} on {', '.join(d['drifted'])}" if d["alert"] else f"no PSI >= {d['threshold']}"
    out.print(escape(verdict), highlight=False)


@monitor_app.command("drift")
@one_line_errors
def monitor_drift(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option("--version", help="One version (default: every version that served "
                                                                   "in the last monitor_active_hours).")] = None,
    window: Annotated[int | None, typer.Option(min=1, max=100_000, help="The last this many predictions.")] = None,
    minutes: Annotated[float | None, typer.Option(min=0, help="Only predictions of the last this many minutes (0: no bound).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the drift reports as JSON.")] = False,
    tracking_uri: UriOpt = None,
) -> None:
    """PSI per input feature and for the prediction score (KS for numeric features) over the version's
    recorded predictions; exit 2 when a version alerts."""
    from platform_api.db import migrate, session_factory
    from platform_api.monitoring import DriftMonitor, WindowSpec, served_versions
    from platform_api.settings import get_settings

    settings = get_settings()
    if version is not None and not version.strip().isdigit():
        raise CliInputError(f"--version must be a version number, got {version!r}")
    registry, name = open_registry(model, tracking_uri)
    url = settings.resolved_database_url()
    migrate(url)
    monitor = DriftMonitor(session_factory(url), registry.report, WindowSpec.from_settings(settings, size=window, minutes=minutes))
    if version is not None:
        registry.show(name, version)  # a version the registry does not have: one line, exit 1
        versions = [version.strip()]
    else:
        with session_factory(url)() as session:
            versions = [v for m, v in served_versions(session, settings.monitor_active_hours) if m == name]
        if not versions:
            raise CliInputError(f"{name}: no predictions in the last {settings.monitor_active_hours:g} h; pass --version")
    reports = [monitor.version_drift(name, v) for v in versions]
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    else:
        for d in reports:
            _print(d)
    if any(d["alert"] for d in reports):
        raise typer.Exit(2)
