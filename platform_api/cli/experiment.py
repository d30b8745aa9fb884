"""``bioverse experiment``: validate a spec, run it, list runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from platform_api.cli.access import launched_by
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out

if TYPE_CHECKING:
    from experiments.spec import ExperimentSpec

__all__ = ["experiment_app", "launch"]

experiment_app = typer.Typer(help="Run and validate experiment specs.", no_args_is_help=True)


@experiment_app.command("validate")
@one_line_errors
def experiment_validate(spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")]) -> None:
    """Validate a spec without running it."""
    from experiments.spec import load_spec

    spec = load_spec(spec_path)
    out.print(f"{spec_path}: valid ({len(spec.data.hospitals)} hospitals, {spec.training.rounds} rounds, "
              f"{spec.strategy.name}, {'DP' if spec.privacy.enabled else 'no DP'})")
    if spec.defaulted:
        chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in spec.defaulted.items())
        out.print(f"DP defaults for what the spec leaves out: {chosen} (docs/dp-training.md)", highlight=False, markup=False)


def launch(spec: ExperimentSpec, *, tracking_uri: str | None, engine: str, superlink: str | None,
           client_cpus: float, timeout: float, ledger_dir: Path | None, quiet: bool,
           coordinator: Path | None = None) -> dict[str, Any]:
    """Run ``spec`` federated, reporting progress on the console; returns the run's summary.
    ``coordinator`` (a ``bioverse coordinator`` folder) gives the SuperLink's loopback address
    and the CA its Control API is verified against."""
    import dataclasses

    from federation.launch_defaults import launch_options
    from federation.launcher import run_experiment
    from platform_api.reporting import RunReporter

    root_certificates = None
    if coordinator is not None:
        from federation.coordinator_setup import load_coordinator

        config = load_coordinator(coordinator)
        superlink, root_certificates = config.superlink_address, config.ca_cert
    options = launch_options(spec.name, engine=engine,  # type: ignore[arg-type]
                             tracking_uri=tracking_uri, superlink=superlink, client_cpus=client_cpus, timeout=timeout,
                             ledger_dir=ledger_dir, launched_by=launched_by())
    options = dataclasses.replace(options, root_certificates=root_certificates)
    reporter = RunReporter(out, spec, quiet=quiet)
    started = time.perf_counter()
    with reporter:
        summary = run_experiment(spec, options, reporter.on_event)
    summary["seconds"]["wall"] = time.perf_counter() - started
    return summary


@experiment_app.command("run")
@one_line_errors
def experiment_run(
    spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    engine: Annotated[str, typer.Option(help="simulation (one box) or deployment (a running SuperLink).")] = "simulation",
    superlink: Annotated[str | None, typer.Option(help="host:port of the SuperLink, for --engine deployment.")] = None,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated hospital.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Seconds before the run is stopped.")] = 3600.0,
    quiet: Annotated[bool, typer.Option(help="Print only the summary.")] = False,
    coordinator: Annotated[Path | None, typer.Option(
        help="A 'bioverse coordinator' folder: run on its SuperLink (TLS, on this machine); implies --engine deployment.")] = None,
) -> None:
    """Run a federated experiment, track it in MLflow and register the model."""
    from experiments.spec import load_spec
    from platform_api.reporting import render_summary

    if engine not in ("simulation", "deployment"):
        raise CliInputError(f"--engine must be simulation or deployment, not {engine!r}")
    if coordinator is not None:
        if superlink:
            raise CliInputError("give --coordinator or --superlink, not both")
        engine = "deployment"
    spec = load_spec(spec_path)
    summary = launch(spec, tracking_uri=tracking_uri, engine=engine, superlink=superlink,
                     client_cpus=client_cpus, timeout=timeout, ledger_dir=None, quiet=quiet, coordinator=coordinator)
    render_summary(out, summary)


@experiment_app.command("resume")
@one_line_errors
def experiment_resume(
    run_id: Annotated[str, typer.Argument(help="The MLflow run to continue (see `bioverse experiment runs`).")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    engine: Annotated[str, typer.Option(help="simulation (one box) or deployment (a running SuperLink).")] = "simulation",
    superlink: Annotated[str | None, typer.Option(help="host:port of the SuperLink, for --engine deployment.")] = None,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated hospital.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Seconds before the run is stopped.")] = 3600.0,
    quiet: Annotated[bool, typer.Option(help="Print only the summary.")] = False,
    spec_path: Annotated[Path | None, typer.Option("--spec", help="Check the run was started with this spec.")] = None,
    coordinator: Annotated[Path | None, typer.Option(
        help="A 'bioverse coordinator' folder: resume on its SuperLink (TLS, on this machine); implies --engine deployment.")] = None,
) -> None:
    """Continue a run whose coordinator died from its last completed round (same run, same round numbers)."""
    import dataclasses

    from experiments.settings import get_settings
    from experiments.spec import load_spec
    from experiments.tracking import reconcile_runs
    from federation.checkpoint import resumable_spec
    from federation.launch_defaults import launch_options
    from federation.launcher import resume_experiment
    from platform_api.reporting import RunReporter, render_summary

    if engine not in ("simulation", "deployment"):
        raise CliInputError(f"--engine must be simulation or deployment, not {engine!r}")
    root_certificates = None
    if coordinator is not None:
        from federation.coordinator_setup import load_coordinator

        if superlink:
            raise CliInputError("give --coordinator or --superlink, not both")
        config = load_coordinator(coordinator)
        engine, superlink, root_certificates = "deployment", config.superlink_address, config.ca_cert
    uri = tracking_uri or get_settings().resolved_tracking_uri()
    reconcile_runs(uri)
    expected = load_spec(spec_path) if spec_path else None
    spec, done = resumable_spec(uri, run_id, expected)
    out.print(f"resuming run {run_id} ({spec.name}) after round {done} of {spec.training.rounds}",
              highlight=False, markup=False)
    options = launch_options(spec.name, engine=engine, tracking_uri=uri, superlink=superlink,  # type: ignore[arg-type]
                             client_cpus=client_cpus, timeout=timeout, launched_by=launched_by())
    options = dataclasses.replace(options, root_certificates=root_certificates)
    started = time.perf_counter()
    with RunReporter(out, spec, quiet=quiet) as reporter:
        summary = resume_experiment(run_id, options, reporter.on_event, expected)
    summary["seconds"]["wall"] = time.perf_counter() - started
    render_summary(out, summary)


@experiment_app.command("runs")
@one_line_errors
def experiment_runs(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    limit: Annotated[int, typer.Option(help="Newest runs to list.")] = 20,
) -> None:
    """List federated runs, newest first, after marking FAILED those whose coordinator died."""
    from experiments.run_status import federated_runs
    from experiments.settings import get_settings

    marked, runs = federated_runs(tracking_uri or get_settings().resolved_tracking_uri(), limit)
    for run_id, reason in marked:
        out.print(f"marked FAILED: run {run_id}: {reason}", highlight=False, markup=False)
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_ms / 1000))
        out.print(f"{started}  {run.experiment:<30} run {run.run_id}  "
                  f"{run.status:<8}{'  ' + run.end_reason if run.end_reason else ''}", highlight=False, markup=False)
    if not runs:
        out.print("no federated runs yet")
