"""The ``bioverse`` command line: one module per command group, each importing what it needs when it runs."""

from __future__ import annotations

import logging

import typer

from platform_api.cli.api import api_app
from platform_api.cli.audit import audit_app
from platform_api.cli.backup import backup_app
from platform_api.cli.coordinator import coordinator_app
from platform_api.cli.data import data_app
from platform_api.cli.doctor import doctor
from platform_api.cli.experiment import experiment_app
from platform_api.cli.features import features_app
from platform_api.cli.federation import federation_app
from platform_api.cli.hospital import hospital_app
from platform_api.cli.ledger import ledger_app
from platform_api.cli.monitor import monitor_app
from platform_api.cli.registry import registry_app
from platform_api.cli.rollout import rollout_app
from platform_api.cli.serve import serve_app
from platform_api.cli.toplevel import demo, score

__all__ = ["app", "main"]

app = typer.Typer(help="BioVerse: federated, differentially private learning for hospitals.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(data_app, name="data")
app.add_typer(experiment_app, name="experiment")
app.add_typer(ledger_app, name="ledger")
app.add_typer(federation_app, name="federation")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(hospital_app, name="hospital")
app.add_typer(features_app, name="features")
app.add_typer(serve_app, name="serve")
app.add_typer(api_app, name="api")
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="backup")
app.add_typer(registry_app, name="registry")
app.add_typer(monitor_app, name="monitor")
app.add_typer(rollout_app, name="rollout")
app.command("demo")(demo)
app.command("score")(score)
app.command("doctor")(doctor)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING)
    app()
