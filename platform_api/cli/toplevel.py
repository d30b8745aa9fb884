"""The top-level commands: ``bioverse demo`` (the main job end to end) and ``bioverse score`` (bulk)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.experiment import launch
from platform_api.cli.output import err, one_line_errors, out

__all__ = ["demo", "score"]


@one_line_errors
def demo(
    hospitals: Annotated[int, typer.Option(help="Synthetic hospitals.")] = 5,
    patients: Annotated[int, typer.Option(help="Patients in total.")] = 12000,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 2026,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    twins: Annotated[int, typer.Option(help="Twins to show through Feast, Ray Serve and the API after training (0: stop after training).")] = 5,
    images: Annotated[bool, typer.Option(help="Also train the federated DP image classifier and classify an image per twin.")] = True,
) -> None:
    """The main job on embedded defaults: synthesise hospitals, run federated DP training, register the
    model, then ingest the hospitals into Feast, serve the new version and show a few twins' predictions.
    With --images (the default) a federated DP image classifier is trained, registered and served too."""
    from experiments.settings import get_settings
    from platform_api.demo import prepare_demo, prepare_vision_demo, showcase
    from platform_api.reporting import render_summary

    data_dir = get_settings().data_dir
    spec, ledger_dir = prepare_demo(data_dir / "demo", hospitals=hospitals, patients=patients,
                                    rounds=rounds, seed=seed, console=out)
    summary = launch(spec, tracking_uri=tracking_uri, engine="simulation", superlink=None, client_cpus=1.0,
                     timeout=3600.0, ledger_dir=ledger_dir, quiet=False)
    render_summary(out, summary, demo=True)
    vision_spec = None
    if images:
        vision_spec, vision_ledgers = prepare_vision_demo(data_dir / "demo-imaging", rounds=rounds, seed=seed, console=out)
        vision_summary = launch(vision_spec, tracking_uri=tracking_uri, engine="simulation", superlink=None,
                                client_cpus=1.0, timeout=3600.0, ledger_dir=vision_ledgers, quiet=False)
        render_summary(out, vision_summary, demo=True)
    if twins > 0:
        showcase(spec=spec, tracking_uri=tracking_uri or get_settings().resolved_tracking_uri(), console=out,
                 twins=twins, vision_spec=vision_spec)


@one_line_errors
def score(
    output: Annotated[Path | None, typer.Option(help="Parquet file to write (default: <data dir>/scores/<model>-<time>.parquet).")] = None,
    model: Annotated[str | None, typer.Option(help="Registered model (default: BIOVERSE_API_MODEL_NAME, cardiac-risk).")] = None,
    alias: Annotated[str | None, typer.Option(help="Registry alias (default: BIOVERSE_API_MODEL_ALIAS, production).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: the API's, else the embedded store).")] = None,
    feature_repo: Annotated[Path | None, typer.Option(help="Feast repo (default: BIOVERSE_FEATURE_REPO, <data dir>/feature_repo).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Score this tenant's twins only.")] = None,
) -> None:
    """Score every twin's current features in the offline store with the production model (bulk).

    Writes tenant_id, patient_id, risk, model_name, model_version, scored_at per twin.
    """
    from platform_api.bulk_scoring import score_twins

    result = score_twins(output=output, model=model, alias=alias, tracking_uri=tracking_uri, feature_repo=feature_repo,
                         tenant=tenant)
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items() if k != "model")
    out.print(f"[bold green]scored[/] {result.rows:,} twins with {result.model_name} version {result.model_version} "
              f"in {result.data_seconds:.2f} s: {result.predictions_per_second:,.0f} predictions/s", highlight=False)
    out.print(f"  {phases}; model load {result.seconds['model']:.2f} s", highlight=False, style="dim")
    out.print(f"  -> {result.output}", highlight=False)
    for feature, n in sorted(result.unknown_categories.items()):
        err.print(f"[yellow]warning:[/] {feature}: {n:,} twins hold a value the model never learned (scored as other)",
                  highlight=False)
