"""``bioverse ledger``: what a hospital's privacy ledger has spent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from platform_api.cli.output import one_line_errors, out

if TYPE_CHECKING:
    from federation.ledger import LedgerEntry

__all__ = ["ledger_app"]

ledger_app = typer.Typer(help="A hospital's privacy ledger.", no_args_is_help=True)


def _entry_line(entry: LedgerEntry, state: str) -> str:
    """One ledger entry: when, which run (and kind), dataset, epsilon, delta, steps, rounds."""
    rounds = f"  rounds {entry.rounds}" if entry.kind == "training" and entry.rounds else ""
    kind = "/" + entry.kind if entry.kind in ("statistics", "selection") else ""
    return (f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(entry.updated))}  {entry.experiment:<30} "
            f"run {entry.run[:12]}{kind}  dataset {entry.dataset[:12]}  "
            f"epsilon {entry.epsilon:.3f}  delta {entry.delta:g}  steps {entry.steps}{rounds}{state}")


@ledger_app.command("show")
@one_line_errors
def ledger_show(
    path: Annotated[Path, typer.Argument(help="The ledger file (JSON).")],
    hospital_id: Annotated[str, typer.Option(help="The hospital the ledger belongs to.")],
    budget: Annotated[float | None, typer.Option(help="The hospital's budget, to show what is left per dataset.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI: also show each run's status there.")] = None,
    empty_ok: Annotated[bool, typer.Option(
        help="A missing ledger in an existing folder is a hospital not charged yet, not a mistyped path.")] = False,
) -> None:
    """Show the epsilon each run has spent at a hospital, per dataset (the budget belongs to
    the hospital and the data it protects)."""
    from federation.errors import FederationError
    from federation.ledger import ANY_DATASET, PrivacyLedger
    from federation.ledger_summary import spent_per_dataset

    if not path.exists():
        if empty_ok and path.parent.is_dir():
            out.print(f"{path}: no charges yet: total epsilon spent: 0.000", highlight=False, markup=False)
            return
        folder = "" if path.parent.is_dir() else f" (nor its folder {path.parent})"
        raise FederationError(f"no such ledger file: {path}{folder}; check the path (a hospital never charged "
                              "has none: pass --empty-ok)")
    entries = PrivacyLedger(path, hospital_id).entries()
    status: dict[str, str] = {}
    if tracking_uri:
        from experiments.run_status import run_statuses

        status = run_statuses(tracking_uri, [e.run.split("/")[0] for e in entries])
    for entry in entries:
        state = f"  MLflow {status.get(entry.run.split('/')[0], 'unknown')}" if tracking_uri else ""
        out.print(_entry_line(entry, state), highlight=False, markup=False)
    for dataset, total in spent_per_dataset(path, hospital_id, entries).items():
        left = f", {budget - total:.3f} left of {budget:g}" if budget is not None else ""
        label = "" if dataset == ANY_DATASET else f" on dataset {dataset[:12]}"
        out.print(f"total epsilon spent{label}: {total:.3f}{left}", highlight=False, markup=False)
