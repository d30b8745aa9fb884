"""``bioverse doctor``: check every configured store and print a table (exit 1 if one fails)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from platform_api.cli.output import err, one_line_errors, out

__all__ = ["doctor"]

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@one_line_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON instead of a table.")] = False,
    min_free_gb: Annotated[float, typer.Option(help="Fail when the data dir's disk has less free space (GiB).")] = 1.0,
) -> None:
    """Check every store the profile and settings name: the platform database and MLflow's (reachable,
    schema at head), MLflow's artifact store (S3: bucket, credentials, a write), Feast's registry and
    online store, the API caches' Redis, and free disk space in the data dir. Exit 1 if a check fails."""
    from rich.table import Table

    from platform_api.doctor import run_checks

    profile, checks = run_checks(min_free_bytes=int(min_free_gb * 2**30))
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        out.print_json(json.dumps({"profile": profile, "ok": not failed, "checks": [c.as_dict() for c in checks]}))
    else:
        table = Table(title=f"bioverse doctor: {profile} profile")
        for column in ("service", "target", "status", "detail"):
            table.add_column(column, overflow="fold")
        table.add_column("time", justify="right")
        for c in checks:
            table.add_row(c.service, c.target, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, f"{c.seconds * 1000:.0f} ms")
        out.print(table)
        warned = sum(c.status == "warn" for c in checks)
        out.print(f"{len(checks)} checks: {len(failed)} failed, {warned} to attend to",
                  style="bold red" if failed else "bold green", highlight=False)
    if failed:
        for c in failed:  # one line per failed check, whole (a table cell folds it)
            err.print(f"failed: {c.service} ({c.target}): {c.detail}", highlight=False, markup=False)
        raise typer.Exit(1)
