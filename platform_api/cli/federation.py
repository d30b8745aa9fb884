"""``bioverse federation``: the deployment engine's SuperLink (coordinator) and SuperNode (hospital)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.errors import CliInputError
from platform_api.cli.output import exec_server, one_line_errors

__all__ = ["federation_app"]

federation_app = typer.Typer(help="Deployment engine: the coordinator's SuperLink, a hospital's SuperNode.", no_args_is_help=True)


@federation_app.command("superlink")
@one_line_errors
def federation_superlink(
    port: Annotated[int, typer.Option(help="Port of the SuperLink's APIs (Fleet, Control, ServerAppIo share it).")] = 9093,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the coordinator's SuperLink (insecure mode: loopback or a private network only;
    across a real network use `bioverse coordinator start`: TLS, node keys, Fleet API only)."""
    from federation.superlink import superlink_command

    exec_server(superlink_command(host=host, port=port, simulation=False))


@federation_app.command("supernode")
@one_line_errors
def federation_supernode(
    superlink: Annotated[str, typer.Option(help="host:port of the coordinator's SuperLink.")],
    hospital_id: Annotated[str, typer.Option(help="This hospital's id, as the experiment spec lists it.")],
    data_path: Annotated[Path, typer.Option(help="This hospital's CSV or Parquet file.")],
    privacy_budget: Annotated[float, typer.Option(help="Total epsilon this hospital allows across all runs.")],
    ledger_path: Annotated[Path | None, typer.Option(help="Privacy ledger file (default: beside the data).")] = None,
    dataset_id: Annotated[str | None, typer.Option(
        help="Name of the dataset the budget protects (default: the data's content fingerprint).")] = None,
    statistics: Annotated[str, typer.Option(
        help="Answer the statistics round with noised, charged aggregates ('dp') or never ('refuse').")] = "dp",
    port: Annotated[int, typer.Option(help="Port of this SuperNode's local runtime API.")] = 9094,
) -> None:
    """Join a federation as one hospital: train on local data with DP, keep the privacy ledger."""
    from federation.errors import FederationError
    from federation.supernode import supernode_command

    if not data_path.is_file():
        raise FederationError(f"{data_path}: no such data file")
    if not (math.isfinite(privacy_budget) and privacy_budget > 0):
        raise CliInputError("--privacy-budget must be a positive, finite epsilon")
    if statistics not in ("dp", "refuse"):
        raise CliInputError(f"--statistics must be dp or refuse, not {statistics!r}")
    node: dict[str, str | float | int] = {"hospital-id": hospital_id, "data-path": str(data_path.resolve()),
                                          "privacy-budget": privacy_budget, "statistics": statistics}
    if ledger_path is not None:
        node["ledger-path"] = str(ledger_path.resolve())
    if dataset_id:
        node["dataset-id"] = dataset_id
    exec_server(supernode_command(superlink=superlink, port=port, node_config=node))
