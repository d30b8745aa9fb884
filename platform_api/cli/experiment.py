"""``bioverse experiment``: validate a spec, run it, list runs."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from platform_api.cli.access import launched_by
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out

if TYPE_CHECKING:
    from experiments.spec import ExperimentSpec
    from federation.launcher import LaunchOptions

__all__ = ["EngineOptions", "experiment_app", "launch"]

experiment_app = typer.Typer(help="Run and validate experiment specs.", no_args_is_help=True)

#: The options ``experiment run`` and ``experiment resume`` share: (name, typer annotation, default).
ENGINE_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("tracking_uri", Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")], None),
    ("engine", Annotated[str, typer.Option(help="simulation (one box) or deployment (a running SuperLink).")], "simulation"),
    ("superlink", Annotated[str | None, typer.Option(help="host:port of the SuperLink, for --engine deployment.")], None),
    ("client_cpus", Annotated[float, typer.Option(help="CPUs per simulated hospital.")], 1.0),
    ("timeout", Annotated[float, typer.Option(help="Seconds before the run is stopped.")], 3600.0),
    ("quiet", Annotated[bool, typer.Option(help="Print only the summary.")], False),
    ("coordinator", Annotated[Path | None, typer.Option(
        help="A 'bioverse coordinator' folder: use its SuperLink (TLS, on this machine); implies --engine deployment.")], None),
)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Where and how a run's coordinator runs, checked: ``--coordinator`` has given the
    SuperLink's loopback address and the CA its Control API is verified against."""

    tracking_uri: str | None
    engine: str
    superlink: str | None
    client_cpus: float
    timeout: float
    quiet: bool
    root_certificates: Path | None = None

    @classmethod
    def from_cli(cls, *, tracking_uri: str | None, engine: str, superlink: str | None, client_cpus: float,
                 timeout: float, quiet: bool, coordinator: Path | None) -> EngineOptions:
        """The options as given, checked (engine name; ``--coordinator`` or ``--superlink``, not both).

        Raises:
            CliInputError: an unknown engine, or both a coordinator and a SuperLink.
            FederationError: the coordinator folder cannot be read.
        """
        if engine not in ("simulation", "deployment"):
            raise CliInputError(f"--engine must be simulation or deployment, not {engine!r}")
        options = cls(tracking_uri, engine, superlink, client_cpus, timeout, quiet)
        if coordinator is None:
            return options
        if superlink:
            raise CliInputError("give --coordinator or --superlink, not both")
        from federation.coordinator_setup import load_coordinator

        config = load_coordinator(coordinator)
        return dataclasses.replace(options, engine="deployment", superlink=config.superlink_address,
                                   root_certificates=config.ca_cert)

    def launch_options(self, experiment: str, *, tracking_uri: str | None = None,
                       ledger_dir: Path | None = None) -> LaunchOptions:
        """Launch options for ``experiment`` now (``tracking_uri``: instead of the one given)."""
        from federation.launch_defaults import launch_options

        options = launch_options(experiment, engine=self.engine,  # type: ignore[arg-type]
                                 tracking_uri=tracking_uri or self.tracking_uri, superlink=self.superlink,
                                 client_cpus=self.client_cpus, timeout=self.timeout, ledger_dir=ledger_dir,
                                 launched_by=launched_by())
        return dataclasses.replace(options, root_certificates=self.root_certificates)


def with_engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the :data:`ENGINE_OPTIONS` after its own parameters, handed to it
    checked, as one keyword argument ``options: EngineOptions``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
              for name, annotation, default in ENGINE_OPTIONS]

    @functools.wraps(command)
    def with_options(*args: Any, **kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name, _, _ in ENGINE_OPTIONS}
        command(*args, options=EngineOptions.from_cli(**given), **kwargs)

    with_options.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return with_options


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
    options = EngineOptions.from_cli(tracking_uri=tracking_uri, engine=engine, superlink=superlink,
                                     client_cpus=client_cpus, timeout=timeout, quiet=quiet, coordinator=coordinator)
    return _launch(spec, options, ledger_dir)


def _launch(spec: ExperimentSpec, options: EngineOptions, ledger_dir: Path | None) -> dict[str, Any]:
    from federation.launcher import run_experiment
    from platform_api.reporting import RunReporter

    launch_options = options.launch_options(spec.name, ledger_dir=ledger_dir)
    started = time.perf_counter()
    with RunReporter(out, spec, quiet=options.quiet) as reporter:
        summary = run_experiment(spec, launch_options, reporter.on_event)
    summary["seconds"]["wall"] = time.perf_counter() - started
    return summary


@experiment_app.command("run")
@one_line_errors
@with_engine_options
def experiment_run(spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")], *,
                   options: EngineOptions) -> None:
    """Run a federated experiment, track it in MLflow and register the model."""
    from experiments.spec import load_spec
    from platform_api.reporting import render_summary

    render_summary(out, _launch(load_spec(spec_path), options, None))


@experiment_app.command("resume")
@one_line_errors
@with_engine_options
def experiment_resume(
    run_id: Annotated[str, typer.Argument(help="The MLflow run to continue (see `bioverse experiment runs`).")],
    spec_path: Annotated[Path | None, typer.Option("--spec", help="Check the run was started with this spec.")] = None,
    *,
    options: EngineOptions,
) -> None:
    """Continue a run whose coordinator died from its last completed round (same run, same round numbers)."""
    from experiments.settings import get_settings
    from experiments.spec import load_spec
    from experiments.tracking import reconcile_runs
    from federation.checkpoint import resumable_spec
    from federation.launcher import resume_experiment
    from platform_api.reporting import RunReporter, render_summary

    uri = options.tracking_uri or get_settings().resolved_tracking_uri()
    reconcile_runs(uri)
    expected = load_spec(spec_path) if spec_path else None
    spec, done = resumable_spec(uri, run_id, expected)
    out.print(f"resuming run {run_id} ({spec.name}) after round {done} of {spec.training.rounds}",
              highlight=False, markup=False)
    launch_options = options.launch_options(spec.name, tracking_uri=uri)
    started = time.perf_counter()
    with RunReporter(out, spec, quiet=options.quiet) as reporter:
        summary = resume_experiment(run_id, launch_options, reporter.on_event, expected)
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
