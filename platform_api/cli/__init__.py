"""The ``bioverse`` command line: synthetic data, experiments, ledgers and the demo."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from experiments.errors import ExperimentError, SpecError
from experiments.settings import get_settings
from experiments.spec import ExperimentSpec, load_spec
from feature_store.errors import FeatureStoreError
from serving.errors import ServingError
from federation.errors import FederationError
from federation.launcher import LaunchOptions, child_env, run_experiment, superlink_command, supernode_command
from federation.ledger import PrivacyLedger
from platform_api.reporting import RunReporter, render_summary
from training.errors import TrainingError

__all__ = ["app", "main"]

app = typer.Typer(help="BioVerse: federated, differentially private learning for hospitals.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Hospital data: synthesise, split and check.", no_args_is_help=True)
experiment_app = typer.Typer(help="Run and validate experiment specs.", no_args_is_help=True)
ledger_app = typer.Typer(help="A hospital's privacy ledger.", no_args_is_help=True)
api_app = typer.Typer(help="The platform API: `bioverse api` serves it; keys manage access.", invoke_without_command=True)
key_app = typer.Typer(help="API keys (the token is shown once; only its hash is stored).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail of access to patient data.", no_args_is_help=True)
api_app.add_typer(key_app, name="key")
serve_app = typer.Typer(help="Ray Serve: the model deployments.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store: patients' current features.", no_args_is_help=True)
federation_app = typer.Typer(help="Deployment engine: the coordinator's SuperLink, a hospital's SuperNode.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(experiment_app, name="experiment")
app.add_typer(ledger_app, name="ledger")
app.add_typer(federation_app, name="federation")
app.add_typer(features_app, name="features")
app.add_typer(serve_app, name="serve")
app.add_typer(api_app, name="api")
app.add_typer(audit_app, name="audit")
registry_app = typer.Typer(help="Registered model versions: review (approve, reject), promote, roll back.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
# Every command prints its outcome, or one error line: MLflow's artifact progress bars are noise there.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
F = TypeVar("F", bound=Callable[..., Any])
_USER_ERRORS = (TrainingError, ExperimentError, FederationError, FeatureStoreError, ServingError, ValueError, OSError)


#: The longest error line the CLI prints (a relayed remote error is cut, never a traceback).
MAX_ERROR_LINE = 300


def _without_tracebacks(text: str) -> str:
    """Drop any traceback a message carries (a remote error relayed whole), keeping the
    line that names the exception."""
    kept, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("Traceback (most recent call last)"):
            inside = True
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        kept.append(line)
    return "\n".join(kept)


def _error_line(e: BaseException) -> str:
    """One bounded line: the error's message without tracebacks, whitespace collapsed."""
    message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", _without_tracebacks(str(e))).split()) or type(e).__name__
    return message if len(message) <= MAX_ERROR_LINE else message[: MAX_ERROR_LINE - 3] + "..."


def _one_line_errors(fn: F) -> F:
    """Turn domain errors into one clear, bounded line on stderr and exit code 1; any other
    error into one line naming its type and exit code 2 (``BIOVERSE_DEBUG=1`` re-raises it
    with its traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted:[/] stopped; an unfinished run is marked KILLED in MLflow", highlight=False)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except _USER_ERRORS as e:
            # a spec lists every problem, one per line; any other error is one line
            lines = [_error_line(SpecError(line)) for line in str(e).splitlines() if line.strip()] \
                if isinstance(e, SpecError) else [_error_line(e)]
            for line in lines or [type(e).__name__]:
                err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as e:
            if os.environ.get("BIOVERSE_DEBUG") == "1":
                raise
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(_error_line(e))} "
                      "(BIOVERSE_DEBUG=1 shows the traceback)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@data_app.command("synth")
@_one_line_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the hospital files into.")],
    hospitals: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    patients: Annotated[int, typer.Option(help="Patients in total, split unevenly across hospitals.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    file_format: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    respell_site: Annotated[int | None, typer.Option(
        help="This hospital (1-based) spells categories its own way (' M ', smoking code 3.0 where others write 3).")] = None,
    split_column: Annotated[str | None, typer.Option(help="Add a column with each patient's fixed part: train, val or test.")] = None,
    missing_code_site: Annotated[int | None, typer.Option(
        help="This hospital (1-based) writes a missing cholesterol as --missing-code instead of an empty cell.")] = None,
    missing_code: Annotated[float, typer.Option(help="The code --missing-code-site writes for 'not measured'.")] = 0.0,
) -> None:
    """Write realistic, non-IID synthetic hospitals with a known ground-truth risk."""
    from training.tabular.synth import Messiness, synthesize_hospitals

    messy = respell_site is not None or split_column is not None or missing_code_site is not None
    messiness = Messiness(respell_site=respell_site, split_column=split_column, missing_code_site=missing_code_site,
                          missing_code=missing_code) if messy else None
    written = synthesize_hospitals(n_hospitals=hospitals, n_patients=patients, seed=seed, out_dir=out_dir, file_format=file_format,
                                   messiness=messiness)
    for h in written:
        out.print(f"{h.hospital_id}  {h.n_patients:>7} patients  prevalence {h.prevalence:6.1%}  {h.path}")


@data_app.command("synth-images")
@_one_line_errors
def data_synth_images(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the imaging hospitals into.")],
    hospitals: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    images: Annotated[int, typer.Option(help="Images per hospital.")] = 240,
    size: Annotated[int, typer.Option(help="Image height and width in pixels.")] = 28,
    channels: Annotated[int, typer.Option(help="1 (grayscale) or 3 (RGB).")] = 1,
    classes: Annotated[str, typer.Option(help="Comma-separated class names; the first has no lesion.")] = "normal,nodule,opacity",
    layout: Annotated[str, typer.Option(help="folder (labels.csv + PNG/JPEG files) or npz (MedMNIST).")] = "folder",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    majority: Annotated[float | None, typer.Option(
        help="The first class's share at every hospital (0.9: 90/10 imbalance); default: drawn per site.")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Folder layout: add a labels.csv column with each image's fixed part (train, val, test by patient).")] = None,
) -> None:
    """Write synthetic imaging hospitals (learnable lesion classes, per-site scanner shifts)."""
    from training.imaging.synth import synthesize_image_hospitals

    names = tuple(c.strip() for c in classes.split(","))
    written = synthesize_image_hospitals(out_dir, n_hospitals=hospitals, images_per_hospital=images, size=size,
                                         channels=channels, classes=names, layout=layout, seed=seed, majority=majority,
                                         split_column=split_column)
    for path in written:
        out.print(f"{path.stem}  {images:>6} images  {size}x{size}x{channels}  {path}", highlight=False)


@data_app.command("split")
@_one_line_errors
def data_split(
    source: Annotated[Path, typer.Argument(help="A .csv or .parquet table, a folder with labels.csv and images, or a .npz.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the hospitals into (new files only).")],
    hospitals: Annotated[int | None, typer.Option(help="How many hospitals (random, stratified).")] = None,
    by: Annotated[str, typer.Option(help="random, stratified (by label) or a column: one hospital per value.")] = "random",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same hospitals.")] = 0,
    label: Annotated[str | None, typer.Option(help="Label column (tables; labels.csv default: label).")] = None,
    patient_id: Annotated[str | None, typer.Option(
        help="Patient id column; a patient never straddles hospitals (default: patient_id if present).")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Column with each row's part, kept: every hospital gets train/val/test (default: split if present).")] = None,
    image_column: Annotated[str, typer.Option(help="labels.csv column naming the image files.")] = "image",
    prefix: Annotated[str, typer.Option(help="Hospital ids: PREFIX-01, PREFIX-02, ...")] = "hospital",
    spec: Annotated[Path | None, typer.Option(help="Also write a spec skeleton listing the hospitals here.")] = None,
) -> None:
    """Make N simulated hospitals from one dataset, keeping its train/val/test split."""
    from training.errors import DataSplitError
    from training.split_tool import SplitOptions, spec_skeleton, split_dataset

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise DataSplitError(source, f"--prefix: {prefix!r} makes no valid hospital id (letters, digits, . _ -)")
    if spec is not None and spec.exists():
        raise DataSplitError(spec, "--spec: the file exists; choose a new path")
    options = SplitOptions(hospitals=hospitals, by=by, seed=seed, label=label, patient_id=patient_id,
                           split_column=split_column, image_column=image_column, prefix=prefix)
    result = split_dataset(source, out_dir, options)
    for hospital in result.hospitals:
        out.print(hospital.line(), highlight=False)
    if result.linked or result.copied:
        out.print(f"images: {result.linked} hard-linked, {result.copied} copied", highlight=False)
    if spec is not None:
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(spec_skeleton(result, spec, source))
        out.print(f"spec skeleton: {spec}", highlight=False)


@data_app.command("check")
@_one_line_errors
def data_check(spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")]) -> None:
    """Check every hospital file named in a spec against its data contract; every hospital's
    problems are printed (one line each) before the exit code says whether any failed."""
    from experiments.data_check import TableCheck, check_table, vocabulary_report
    from experiments.spec import ImageDataSpec

    spec = load_spec(spec_path)
    data = spec.data
    problems: list[str] = []
    tables: list[TableCheck] = []
    for hospital in data.hospitals:
        if hospital.path is None:
            out.print(f"{hospital.id}: no path (deployment site, checked at the hospital)")
            continue
        try:
            if isinstance(data, ImageDataSpec):
                from experiments.local_validation import image_split, split_origin
                from training.imaging.data import class_counts

                split = image_split(data, hospital.path, spec.seed)
                counts = class_counts(split.train_labels, len(data.classes))
                mix = ", ".join(f"{c} {k}" for c, k in zip(data.classes, counts, strict=True))
                parts = split.counts()
                out.print(f"{hospital.id}: ok, {parts['train']} training, {parts['val']} val and {parts['test']} held-out "
                          f"images ({mix} in training); split from {split_origin(split, data, spec.seed)}", highlight=False)
                continue
            assert not isinstance(data, ImageDataSpec)
            table = check_table(data, hospital, spec.seed)
        except _USER_ERRORS as e:
            problems.append(f"{hospital.id}: {_error_line(e)}")
            continue
        tables.append(table)
        for line in table.lines(data):
            out.print(line, highlight=False, markup=False)
        for line in table.warnings():
            err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    if tables and not isinstance(data, ImageDataSpec):
        for finding in vocabulary_report(tables, data):
            if data.unknown_categories == "refuse":
                problems.append(f"{finding.describe()} (data.unknown_categories: refuse)")
            else:
                err.print(f"[yellow]warning:[/] {escape(finding.describe())}", highlight=False)
    for problem in problems:
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


@experiment_app.command("validate")
@_one_line_errors
def experiment_validate(spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")]) -> None:
    """Validate a spec without running it."""
    spec = load_spec(spec_path)
    out.print(f"{spec_path}: valid ({len(spec.data.hospitals)} hospitals, {spec.training.rounds} rounds, "
              f"{spec.strategy.name}, {'DP' if spec.privacy.enabled else 'no DP'})")
    if spec.defaulted:
        chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in spec.defaulted.items())
        out.print(f"DP defaults for what the spec leaves out: {chosen} (docs/dp-training.md)", highlight=False, markup=False)


def _launch(spec: ExperimentSpec, *, tracking_uri: str | None, engine: str, superlink: str | None,
            client_cpus: float, timeout: float, ledger_dir: Path | None, quiet: bool) -> dict[str, Any]:
    settings = get_settings()
    uri = tracking_uri or settings.resolved_tracking_uri()
    run_dir = settings.data_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}"
    options = LaunchOptions(engine=engine,  # type: ignore[arg-type]
                            run_dir=run_dir, tracking_uri=uri, superlink=superlink,
                            ledger_dir=ledger_dir or settings.data_dir / "ledgers", client_cpus=client_cpus, timeout=timeout,
                            launched_by=_launched_by())
    reporter = RunReporter(out, spec, quiet=quiet)
    started = time.perf_counter()
    with reporter:
        summary = run_experiment(spec, options, reporter.on_event)
    summary["seconds"]["wall"] = time.perf_counter() - started
    return summary


@experiment_app.command("run")
@_one_line_errors
def experiment_run(
    spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    engine: Annotated[str, typer.Option(help="simulation (one box) or deployment (a running SuperLink).")] = "simulation",
    superlink: Annotated[str | None, typer.Option(help="host:port of the SuperLink, for --engine deployment.")] = None,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated hospital.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Seconds before the run is stopped.")] = 3600.0,
    quiet: Annotated[bool, typer.Option(help="Print only the summary.")] = False,
) -> None:
    """Run a federated experiment, track it in MLflow and register the model."""
    if engine not in ("simulation", "deployment"):
        raise ValueError(f"--engine must be simulation or deployment, not {engine!r}")
    spec = load_spec(spec_path)
    summary = _launch(spec, tracking_uri=tracking_uri, engine=engine, superlink=superlink,
                      client_cpus=client_cpus, timeout=timeout, ledger_dir=None, quiet=quiet)
    render_summary(out, summary)


@experiment_app.command("runs")
@_one_line_errors
def experiment_runs(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: SQLite in the data dir).")] = None,
    limit: Annotated[int, typer.Option(help="Newest runs to list.")] = 20,
) -> None:
    """List federated runs, newest first, after marking FAILED those whose coordinator died."""
    from mlflow.tracking import MlflowClient

    from experiments.tracking import END_REASON_TAG, reconcile_runs

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    for run_id, reason in reconcile_runs(uri):
        out.print(f"marked FAILED: run {run_id}: {reason}", highlight=False, markup=False)
    client = MlflowClient(tracking_uri=uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(experiments), filter_string="tags.`bioverse.kind` = 'federated-training'",
                              order_by=["attributes.start_time DESC"], max_results=limit) if experiments else []
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        reason = run.data.tags.get(END_REASON_TAG, "")
        out.print(f"{started}  {experiments.get(run.info.experiment_id, '?'):<30} run {run.info.run_id}  "
                  f"{run.info.status:<8}{'  ' + reason if reason else ''}", highlight=False, markup=False)
    if not runs:
        out.print("no federated runs yet")


@ledger_app.command("show")
@_one_line_errors
def ledger_show(
    path: Annotated[Path, typer.Argument(help="The ledger file (JSON).")],
    hospital_id: Annotated[str, typer.Option(help="The hospital the ledger belongs to.")],
    budget: Annotated[float | None, typer.Option(help="The hospital's budget, to show what is left per dataset.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI: also show each run's status there.")] = None,
) -> None:
    """Show the epsilon each run has spent at a hospital, per dataset (the budget belongs to
    the hospital and the data it protects)."""
    from federation.ledger import ANY_DATASET

    if not path.exists():
        raise FederationError(f"{path}: no ledger (nothing spent yet)")
    entries = PrivacyLedger(path, hospital_id).entries()
    status = _run_statuses(tracking_uri, [e.run.split("/")[0] for e in entries]) if tracking_uri else {}
    for entry in entries:
        run = entry.run.split("/")[0]
        state = f"  MLflow {status.get(run, 'unknown')}" if tracking_uri else ""
        rounds = f"  rounds {entry.rounds}" if entry.kind == "training" and entry.rounds else ""
        out.print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(entry.updated))}  {entry.experiment:<30} "
                  f"run {entry.run[:12]}{'/' + entry.kind if entry.kind in ('statistics', 'selection') else ''}  dataset {entry.dataset[:12]}  "
                  f"epsilon {entry.epsilon:.3f}  delta {entry.delta:g}  steps {entry.steps}{rounds}{state}",
                  highlight=False, markup=False)
    datasets = sorted({e.dataset for e in entries} - {ANY_DATASET}) or [ANY_DATASET]
    for dataset in datasets:
        total = PrivacyLedger(path, hospital_id, None if dataset == ANY_DATASET else dataset).spent()
        left = f", {budget - total:.3f} left of {budget:g}" if budget is not None else ""
        label = "" if dataset == ANY_DATASET else f" on dataset {dataset[:12]}"
        out.print(f"total epsilon spent{label}: {total:.3f}{left}", highlight=False, markup=False)


def _run_statuses(tracking_uri: str, run_ids: list[str]) -> dict[str, str]:
    """MLflow status of each run (after reconciling runs whose coordinator died)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from experiments.tracking import reconcile_runs

    reconcile_runs(tracking_uri)
    client, found = MlflowClient(tracking_uri=tracking_uri), {}
    for run_id in set(run_ids):
        try:
            found[run_id] = client.get_run(run_id).info.status
        except MlflowException:
            found[run_id] = "not found"
    return found


def _feature_repo(init: bool = False) -> Any:
    from feature_store.repo import FeatureRepo
    from feature_store.settings import get_settings as feature_settings

    settings = feature_settings()
    repo = FeatureRepo(settings.repo_dir)
    if init or not (repo.repo_dir / "feature_store.yaml").exists():
        repo.init(online_store=settings.online_store, redis_url=settings.redis_url, project=settings.feast_project)
    return repo


@features_app.command("init")
@_one_line_errors
def features_init() -> None:
    """Create (or update) the Feast repo and apply its definitions.

    The online store comes from BIOVERSE_ONLINE_STORE (sqlite or redis) and BIOVERSE_REDIS_URL.
    """
    repo = _feature_repo(init=True)
    out.print(f"Feast repo ready in {repo.repo_dir} (run `feast` commands there)", highlight=False)


@features_app.command("ingest")
@_one_line_errors
def features_ingest(
    directory: Annotated[Path, typer.Argument(help="Folder of hospital files (CSV or Parquet), one per tenant.")],
    tenant: Annotated[str | None, typer.Option(help="Tenant of a single file (default: each file's name).")] = None,
) -> None:
    """Load hospital files (the training data contract) into the offline store, one tenant per file."""
    from feature_store.definitions import VIEWS
    from training.tabular.contract import DataContract, load_hospital_table

    files = sorted(p for p in directory.glob("*") if p.suffix.lower() in (".csv", ".parquet")) if directory.is_dir() else []
    if not files:
        raise FeatureStoreError(f"{directory}: no .csv or .parquet hospital files")
    if tenant and len(files) > 1:
        raise ValueError("--tenant names the tenant of a single file; this folder holds several")
    contract = DataContract("patient_id", None, VIEWS["vitals"] + VIEWS["labs"] + ("age",), ("sex", "smoking"))
    repo = _feature_repo()
    for path in files:
        frame = load_hospital_table(path, contract)
        count = repo.ingest(frame, tenant_id=tenant or path.stem)
        out.print(f"{tenant or path.stem}: {count} patients from {path}", highlight=False)


@features_app.command("materialize")
@_one_line_errors
def features_materialize() -> None:
    """Load the latest offline features into the online store."""
    _feature_repo().materialize()


@features_app.command("get")
@_one_line_errors
def features_get(
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    patient_ids: Annotated[list[str], typer.Argument(help="Patient ids within the tenant.")],
) -> None:
    """Print patients' current online features as JSON lines."""
    import json

    for row in _feature_repo().online_features(tenant, patient_ids):
        out.print(json.dumps(row), highlight=False, soft_wrap=True)


@serve_app.command("up")
@_one_line_errors
def serve_up(
    model: Annotated[str, typer.Option(help="Registered model to serve.")] = "cardiac-risk",
    alias: Annotated[str, typer.Option(help="Registry alias to follow.")] = "production",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: the embedded store).")] = None,
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy.")] = 8000,
    config: Annotated[Path | None, typer.Option(help="A Serve config file (default: serving/serve_config.yaml).")] = None,
    vision_model: Annotated[str, typer.Option(help="Registered image classifier to serve at /vision ('none': no vision; "
                                                   "left out when it has no version under the alias).")] = "chest-xray",
) -> None:
    """Start Ray Serve locally: the risk application (POST /risk {"instances": [...]}) and the
    vision application (POST /vision with a PNG/JPEG body), each following the alias."""
    import yaml

    from serving.errors import ModelNotReadyError, UnapprovedVersion
    from serving.model_source import RegistryModel

    uri = tracking_uri or get_settings().resolved_tracking_uri()
    risk = RegistryModel(uri, model, alias)
    version = risk.current_version()  # fail here, in one line, not in a replica
    risk.check_servable(version)  # an alias moved past the review gate: refused here too
    vision_version = None
    if vision_model.lower() != "none":
        try:
            vision = RegistryModel(uri, vision_model, alias)
            vision_version = vision.current_version()
            vision.check_servable(vision_version)
        except UnapprovedVersion as refused:
            vision_version = None
            out.print(f"Not serving the vision application: {refused}", highlight=False)
        except ModelNotReadyError:
            out.print(f"No {vision_model}@{alias}: serving without the vision application", highlight=False)
    source = config or Path(__file__).resolve().parent.parent / "serving" / "serve_config.yaml"
    settings = yaml.safe_load(source.read_text())
    settings.setdefault("http_options", {})["port"] = port
    if vision_version is None:
        settings["applications"] = [a for a in settings["applications"] if a["name"] != "vision"]
    for application in settings["applications"]:
        if application["name"] == "risk":
            application.setdefault("args", {}).update(model_name=model, alias=alias, tracking_uri=uri)
        if application["name"] == "vision":
            application.setdefault("args", {}).update(model_name=vision_model, alias=alias, tracking_uri=uri)
    run_dir = get_settings().data_dir / "serve"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "serve_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    out.print(f"Serving {model}@{alias} (version {version}) on http://127.0.0.1:{port}/risk", highlight=False)
    if vision_version is not None:
        out.print(f"Serving {vision_model}@{alias} (version {vision_version}) on http://127.0.0.1:{port}/vision", highlight=False)
    _exec([str(Path(sys.executable).parent / "serve"), "run", str(run_dir / "serve_config.yaml")])


@api_app.callback()
@_one_line_errors
def api(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Start the platform API (migrating its database first)."""
    if ctx.invoked_subcommand is not None:
        return
    from platform_api.settings import get_settings as api_settings

    api_settings()  # check the settings before starting: a bad one is one line, not a traceback
    out.print(f"BioVerse platform API on http://{host}:{port} (docs at /docs)", highlight=False)
    # the server process keeps PyTorch out (platform_api.asgi): about 230 MB less resident memory
    _exec([str(Path(sys.executable).parent / "uvicorn"), "platform_api.asgi:app", "--host", host, "--port", str(port),
           "--log-level", "warning", "--no-access-log"])


def _api_session() -> Any:
    from platform_api.db import migrate, session_factory
    from platform_api.settings import get_settings as api_settings

    migrate(api_settings().resolved_database_url())
    return session_factory()()


@key_app.command("create")
@_one_line_errors
def key_create(
    role: Annotated[str, typer.Option(help="admin, data_scientist, hospital, app or clinical_validator.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant (required for every role but admin and clinical_validator; "
                                                    "a validator without one reviews platform-wide models).")] = None,
    name: Annotated[str, typer.Option(help="Who uses the key: the person's name for data scientists and validators "
                                           "(the review gate compares people by it), else the app or site.")] = "",
) -> None:
    """Create an API key and print its token (once)."""
    from platform_api.auth import create_key

    if role in ("clinical_validator", "data_scientist") and not name.strip():
        raise ValueError(f"a {role} key needs --name: the person it belongs to (reviews are independent of launches by person)")

    with _api_session() as session, _key_audit(session) as audit:
        token = create_key(session, role=role, tenant_id=tenant, name=name, commit=False)
        audit(f"key.create:{token.split('_')[1]}:{role}", tenant)
    out.print(token, highlight=False)


@contextlib.contextmanager
def _key_audit(session: Any) -> Iterator[Callable[[str, str | None], None]]:
    """Commit a key change together with its audit event (actor: the OS login that ran the CLI,
    the only identity a command run with direct database access has)."""
    import getpass

    from platform_api.audit import CHAIN_LOCK, record
    from platform_api.audit_checkpoints import note_appended

    def audit(action: str, tenant_id: str | None) -> None:
        record(session, actor=f"os:{getpass.getuser()}"[:32], role="admin", tenant_id=tenant_id, patient_id=None,
               action=action[:64], outcome="ok")

    with CHAIN_LOCK:
        yield audit
        session.commit()
    note_appended(session.get_bind(), 1)


@key_app.command("revoke")
@_one_line_errors
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after bv_).")]) -> None:
    """Revoke an API key."""
    from platform_api.auth import revoke

    with _api_session() as session, _key_audit(session) as audit:
        if not revoke(session, key_id, commit=False):
            raise ValueError(f"no active key {key_id}")
        audit(f"key.revoke:{key_id}", None)
    out.print(f"revoked {key_id}", highlight=False)


def _unreadable_audit_log(e: Exception) -> ValueError:
    """A database that cannot be read (down, or its audit table dropped): one line, not a traceback."""
    return ValueError(f"cannot read the audit log: {' '.join(str(getattr(e, 'orig', None) or e).split())}")


@audit_app.command("verify")
@_one_line_errors
def audit_verify(
    checkpoints: Annotated[Path | None, typer.Option(help="Checkpoints file (default: the API's audit_checkpoints).")] = None,
    max_lines: Annotated[int, typer.Option(help="Print at most this many breaks (0: all).", min=0)] = 200,
) -> None:
    """Recompute the MAC chain and check it against the signed checkpoints; print every break, exit 1 if any."""
    from sqlalchemy.exc import SQLAlchemyError

    from platform_api.audit import verify

    try:
        with _api_session() as session:
            check = verify(session, checkpoints=checkpoints)
    except SQLAlchemyError as e:
        raise _unreadable_audit_log(e) from None
    anchor = (f"{check.checkpoints} checkpoint{'s' if check.checkpoints > 1 else ''}" if check.checkpoints
              else "no checkpoint yet: the tail is not anchored")
    legacy = f", {min(check.legacy_until, check.last_id)} legacy (unkeyed)" if check.legacy_until else ""
    if check.ok:
        out.print(f"audit log intact: {check.events} events{legacy}, {anchor}", highlight=False)
        return
    err.print(f"[bold red]error:[/] audit log BROKEN: {len(check.breaks)} breaks in {check.events} events{legacy}, {anchor}",
              highlight=False)
    shown = check.breaks if max_lines == 0 else check.breaks[:max_lines]
    for item in shown:
        where = "checkpoints" if item.event_id is None else f"event {item.event_id}"
        err.print(f"  {where}: {item.reason}", highlight=False, markup=False)
    if len(shown) < len(check.breaks):
        err.print(f"  ... {len(check.breaks) - len(shown)} more (--max-lines 0 prints all)", highlight=False)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
@_one_line_errors
def audit_checkpoint(
    checkpoints: Annotated[Path | None, typer.Option(help="Checkpoints file (default: the API's audit_checkpoints).")] = None,
) -> None:
    """Append a signed checkpoint of the chain's head to the checkpoints file (run it from cron, too)."""
    from sqlalchemy.exc import SQLAlchemyError

    from platform_api.audit_checkpoints import checkpoint_path, write_checkpoint

    try:
        with _api_session() as session:
            cp = write_checkpoint(session.get_bind(), path=checkpoints)
    except SQLAlchemyError as e:
        raise _unreadable_audit_log(e) from None
    if cp is None:
        out.print("audit log empty: nothing to checkpoint", highlight=False)
        return
    out.print(f"checkpoint: {cp.events} events, head {cp.head[:16]}... (event {cp.last_id}) -> "
              f"{checkpoints or checkpoint_path()}", highlight=False)


def _exec(command: list[str]) -> None:
    """Replace this process with a server process (it keeps the terminal and signals)."""
    import os

    out.print(" ".join(command), highlight=False)
    os.execve(command[0], command, child_env())


@federation_app.command("superlink")
@_one_line_errors
def federation_superlink(
    port: Annotated[int, typer.Option(help="Port of the SuperLink's APIs (Fleet, Control, ServerAppIo share it).")] = 9093,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the coordinator's SuperLink (insecure mode: loopback or a private network only)."""
    _exec(superlink_command(host=host, port=port, simulation=False))


@federation_app.command("supernode")
@_one_line_errors
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
    if not data_path.is_file():
        raise FederationError(f"{data_path}: no such data file")
    if not (math.isfinite(privacy_budget) and privacy_budget > 0):
        raise ValueError("--privacy-budget must be a positive, finite epsilon")
    if statistics not in ("dp", "refuse"):
        raise ValueError(f"--statistics must be dp or refuse, not {statistics!r}")
    node: dict[str, str | float | int] = {"hospital-id": hospital_id, "data-path": str(data_path.resolve()),
                                          "privacy-budget": privacy_budget, "statistics": statistics}
    if ledger_path is not None:
        node["ledger-path"] = str(ledger_path.resolve())
    if dataset_id:
        node["dataset-id"] = dataset_id
    _exec(supernode_command(superlink=superlink, port=port, node_config=node))


@app.command("demo")
@_one_line_errors
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
    from platform_api.demo import prepare_demo, prepare_vision_demo

    spec, ledger_dir = prepare_demo(get_settings().data_dir / "demo", hospitals=hospitals, patients=patients,
                                    rounds=rounds, seed=seed, console=out)
    summary = _launch(spec, tracking_uri=tracking_uri, engine="simulation", superlink=None, client_cpus=1.0,
                      timeout=3600.0, ledger_dir=ledger_dir, quiet=False)
    render_summary(out, summary, demo=True)
    vision_spec = None
    if images:
        vision_spec, vision_ledgers = prepare_vision_demo(get_settings().data_dir / "demo-imaging", rounds=rounds, seed=seed,
                                                          console=out)
        vision_summary = _launch(vision_spec, tracking_uri=tracking_uri, engine="simulation", superlink=None,
                                 client_cpus=1.0, timeout=3600.0, ledger_dir=vision_ledgers, quiet=False)
        render_summary(out, vision_summary, demo=True)
    if twins > 0:
        from experiments.settings import get_settings as experiment_settings
        from platform_api.demo import showcase

        showcase(spec=spec, tracking_uri=tracking_uri or experiment_settings().resolved_tracking_uri(), console=out,
                 twins=twins, vision_spec=vision_spec)


@app.command("score")
@_one_line_errors
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

    from feature_store.settings import get_settings as feature_settings
    from platform_api.settings import get_settings as api_settings
    from serving.bulk import score_offline_store

    settings = api_settings()
    name = model or settings.model_name
    target = output or get_settings().data_dir / "scores" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.parquet"
    result = score_offline_store(tracking_uri=tracking_uri or settings.resolved_tracking_uri(), model=name,
                                 alias=alias or settings.model_alias, feature_repo=feature_repo or feature_settings().repo_dir,
                                 output=target, tenant=tenant)
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items() if k != "model")
    out.print(f"[bold green]scored[/] {result.rows:,} twins with {result.model_name} version {result.model_version} "
              f"in {result.data_seconds:.2f} s: {result.predictions_per_second:,.0f} predictions/s", highlight=False)
    out.print(f"  {phases}; model load {result.seconds['model']:.2f} s", highlight=False, style="dim")
    out.print(f"  -> {result.output}", highlight=False)
    for feature, n in sorted(result.unknown_categories.items()):
        err.print(f"[yellow]warning:[/] {feature}: {n:,} twins hold a value the model never learned (scored as other)",
                  highlight=False)


# ---- `bioverse registry`: clinical review of registered versions (experiments.registry) ----
_ModelOpt = Annotated[str | None, typer.Option("--model", help="Registered model (default: BIOVERSE_API_MODEL_NAME, cardiac-risk).")]
_UriOpt = Annotated[str | None, typer.Option(help="MLflow URI (default: the API's, else the embedded store).")]


def _registry(model: str | None, tracking_uri: str | None) -> tuple[Any, str]:

    from experiments.registry import ModelRegistry
    from platform_api.settings import get_settings as api_settings

    settings = api_settings()
    return ModelRegistry(tracking_uri or settings.resolved_tracking_uri()), model or settings.model_name


_KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="BIOVERSE_API_KEY", show_default=False,
                                              help="Your API key (bv_...; default: BIOVERSE_API_KEY): its person decides.")]


def _principal(api_key: str | None, *roles: str) -> Any:
    """The caller an API key belongs to, checked against the platform database as the API does."""
    from platform_api.auth import authenticate
    from platform_api.errors import NotAuthenticated

    if not (api_key or "").strip():
        raise ValueError("an API key is required: set BIOVERSE_API_KEY or pass --api-key "
                         "(an admin creates one: bioverse api key create --role clinical_validator --name 'Dr Quinn')")
    try:
        with _api_session() as session:
            who = authenticate(session, (api_key or "").strip())
    except NotAuthenticated as e:
        raise ValueError(f"API key refused: {e}") from None
    if roles and who.role not in roles:
        raise ValueError(f"role {who.role} may not do this (allowed: {', '.join(roles)})")
    return who


def _launched_by() -> str | None:
    """``launched_by`` of a launch: the person of ``BIOVERSE_API_KEY`` (checked against the platform
    database) as ``key:<id>/<person>``; None without the variable (the launcher records ``os:<login>``)."""
    import os

    key = os.environ.get("BIOVERSE_API_KEY", "").strip()
    return _principal(key).identity.tag if key else None


def _audited_decision(who: Any, action: str, name: str, version: str, decide: Callable[[], Any]) -> Any:
    """Run ``decide`` and append it, or its refusal, to the platform's audit log as ``who``."""
    from experiments.registry import audit_action
    from platform_api.audit import audited

    with _api_session() as session, audited(session, who, audit_action(action, name, version)):
        return decide()


def _print_decision(decision: Any) -> None:
    before = f" (was {decision.previous})" if decision.previous and decision.action in ("promote", "rollback") else ""
    from rich.markup import escape

    out.print(f"[bold green]{decision.outcome}[/] {escape(f'{decision.name} version {decision.version}{before} by {decision.actor}')} "
              f"at {decision.at}", highlight=False)


@registry_app.command("list")
@_one_line_errors
def registry_list(model: _ModelOpt = None, tracking_uri: _UriOpt = None) -> None:
    """List a model's versions, newest first: review status, validation, aliases."""
    from rich.table import Table

    registry, name = _registry(model, tracking_uri)
    table = Table(title=name, title_justify="left", box=None, pad_edge=False, padding=(0, 1))
    for column in ("v", "created", "review", "report", "AUROC", "slope", "eps", "aliases", "launcher", "reviewer", "warning"):
        folds = column in ("aliases", "launcher", "reviewer", "warning")
        table.add_column(column, justify="right" if column in ("v", "AUROC", "slope", "eps") else "left",
                         no_wrap=not folds, overflow="fold", min_width=10 if column == "aliases" else None)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    for v in registry.versions(name):
        table.add_row(v.version, v.created.strftime("%Y-%m-%d"), v.review_status, v.validation_status, fmt(v.auroc),
                      fmt(v.calibration_slope), fmt(v.epsilon), ",".join(v.aliases) or "-", v.launched_by or "?",
                      v.decided_by or "-", "; ".join(w for w in (v.gate_warning, v.quality_warning) if w) or "-")
    out.print(table, markup=False)


@registry_app.command("show")
@_one_line_errors
def registry_show(version: Annotated[str, typer.Argument(help="The version number.")], model: _ModelOpt = None,
                  tracking_uri: _UriOpt = None) -> None:
    """Show a version: its tags, validation summary and where its HTML report is."""
    registry, name = _registry(model, tracking_uri)
    v = registry.show(name, version)
    out.print(f"{name} version {v.version} ({v.review_status}; aliases: {', '.join(v.aliases) or 'none'})",
              highlight=False, markup=False, style="bold")
    if v.gate_warning:
        out.print(f"  WARNING: {v.gate_warning}", highlight=False, markup=False, style="bold red")
    if v.quality_warning:
        out.print(f"  QUALITY WARNING: {v.quality_warning}", highlight=False, markup=False, style="bold yellow")
    out.print(f"  experiment {v.experiment or '?'}, run {v.run_id or '?'}, launched by {v.launched_by or '?'}, "
              f"created {v.created.isoformat(timespec='seconds')}", highlight=False, markup=False)
    sha = registry.report_sha256(name, version)
    out.print(f"  validation {v.validation_status}: AUROC {v.auroc if v.auroc is not None else 'n/a'}, calibration slope "
              f"{v.calibration_slope if v.calibration_slope is not None else 'n/a'}, epsilon "
              f"{v.epsilon if v.epsilon is not None else 'n/a'}", highlight=False)
    if "decision_rule" in v.tags:
        tags = v.tags
        at = ", ".join(f"{k} {tags[f'validation.decision_{k}']}" for k in ("sensitivity", "specificity", "balanced_accuracy")
                       if f"validation.decision_{k}" in tags)
        out.print(f"  decision: {tags['decision_rule']} threshold {tags.get('decision_threshold', 'none (class scale)')} "
                  f"({tags.get('decision_source', '?')})" + (f"; on the test part: {at}" if at else ""),
                  highlight=False, markup=False)
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
@_one_line_errors
def registry_report(
    version: Annotated[str, typer.Argument(help="The version number.")],
    output: Annotated[Path | None, typer.Option(help="Folder for report.json and report.html "
                                                     "(default: <data dir>/review/<model>-v<version>).")] = None,
    api_key: _KeyOpt = None,
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Fetch a version's validation report to read, and your read receipt (approval needs it)."""
    who = _principal(api_key, "clinical_validator", "admin", "data_scientist")
    registry, name = _registry(model, tracking_uri)
    read = registry.read_report(name, version, who.identity)
    if read is None:
        raise ValueError(f"{name} version {version} has no validation report: it cannot be approved")
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
@_one_line_errors
def registry_approve(
    version: Annotated[str, typer.Argument(help="The version number.")],
    rationale: Annotated[str, typer.Option(help="Why (at least 20 characters); stored with the version.")],
    receipt: Annotated[str, typer.Option("--receipt", help="Your read receipt of the report (`bioverse registry report`).")],
    api_key: _KeyOpt = None,
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Approve a pending version (it may then be promoted); the audit log records it."""
    who = _principal(api_key, "clinical_validator")
    registry, name = _registry(model, tracking_uri)
    decision = _audited_decision(who, "approve", name, version, lambda: registry.approve(
        name, version, validator=who.identity, rationale=rationale, receipt=receipt))
    _print_decision(decision)


@registry_app.command("reject")
@_one_line_errors
def registry_reject(
    version: Annotated[str, typer.Argument(help="The version number.")],
    rationale: Annotated[str, typer.Option(help="Why (at least 20 characters); stored with the version.")],
    receipt: Annotated[str | None, typer.Option("--receipt", help="Your read receipt of the report, if you read one.")] = None,
    api_key: _KeyOpt = None,
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Reject a pending version (it can never be promoted); the audit log records it."""
    who = _principal(api_key, "clinical_validator")
    registry, name = _registry(model, tracking_uri)
    decision = _audited_decision(who, "reject", name, version, lambda: registry.reject(
        name, version, validator=who.identity, rationale=rationale, receipt=receipt))
    _print_decision(decision)


@registry_app.command("validate")
@_one_line_errors
def registry_validate(
    version: Annotated[str, typer.Argument(help="The version number.")],
    data: Annotated[Path, typer.Option(help="Your own validation file (CSV or Parquet; for an image model a folder with "
                                            "labels.csv or a .npz), under the experiment's data contract.")],
    output: Annotated[Path | None, typer.Option(help="Folder for the report (default: <data dir>/validation/<model>-v<version>).")] = None,
    part: Annotated[str, typer.Option(help="test (default): only held-out data; val: the val part; all: every row "
                                           "(refused for the version's own training data).")] = "test",
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Run the validation report on a local validation file of your own; nothing leaves this machine.

    Only held-out data is scored: a .npz's test part, the rows a split column marks test,
    the part a training hospital's run held out (the file is one of the version's training
    datasets), or every row of a file the registry does not know. The output says which.
    """
    from experiments.local_validation import PARTS, held_out_images, held_out_rows
    from experiments.report import write_report_artifacts
    from experiments.spec import ImageDataSpec, parse_spec
    from federation.hospital import report_subgroups
    from serving.model_source import RegistryModel
    from training.decision import decision_on_scores
    from training.tabular.validation import local_report

    if part not in PARTS:
        raise ValueError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    registry, name = _registry(model, tracking_uri)
    info = registry.show(name, version)
    if info.run_id is None:
        raise ValueError(f"{name} version {version} has no training run, so no data contract to check {data} against")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = registry.client.download_artifacts(info.run_id, "spec.json", tmp)
        spec = parse_spec(json.loads(Path(spec_path).read_text()), f"{name} v{version}")
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    folder = output or get_settings().data_dir / "validation" / f"{name}-v{version}"
    meta: dict[str, Any] = {"model_name": name, "version": version, "experiment": info.experiment,
                            "run_id": info.run_id, "hospitals": [f"local: {data.name}"]}
    if isinstance(spec.data, ImageDataSpec):
        from federation.hospital_images import image_subgroups
        from training.imaging.validation import local_multiclass_report

        whole, held = held_out_images(data, spec, info.tags, part)  # type: ignore[arg-type]
        meta["hospitals"] = [f"local: {data.name}, {held.sentence('images')}"]
        out.print(f"{name} version {version} on {data}: {held.sentence('images')}", highlight=False)
        vision = RegistryModel(registry.tracking_uri, name, require_approval=False).load_vision(version).scorer
        probs = vision.predict(whole.test_images)
        report = local_multiclass_report(probs, whole.test_labels, list(spec.data.classes),
                                         image_subgroups(whole, spec, data), min_cell=spec.validation.min_cell)
        report["decision"] = decision_on_scores(vision.decision, probs, whole.test_labels)
        written = write_report_artifacts(report, {**meta, "task": "multiclass", "classes": list(spec.data.classes)}, folder)
        overall = report["overall"]
        out.print(f"{name} version {version} on {data} ({overall['n']} images): accuracy {fmt(overall['accuracy'])}, "
                  f"balanced accuracy {fmt(overall['balanced_accuracy'])}, macro AUROC {fmt(overall['auroc'])}, "
                  f"ECE {fmt(overall['ece'])}", highlight=False)
        _print_decision_rule(report["decision"])
        out.print(f"Report: {written['report.html']}", highlight=False)
        return
    frame, held = held_out_rows(data, spec, info.tags, part)  # type: ignore[arg-type]
    meta["hospitals"] = [f"local: {data.name}, {held.sentence('patients')}"]
    out.print(f"{name} version {version} on {data}: {held.sentence('patients')}", highlight=False)
    scorer = RegistryModel(registry.tracking_uri, name, require_approval=False).load(version).scorer
    risk, label = scorer.score_columns(frame), frame[spec.data.label].to_numpy().astype(int)
    report = local_report(risk, label, report_subgroups(frame, spec), spec.validation.thresholds,
                          min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, risk, label)
    unknown = scorer.unknown_counts(frame)  # values the model never learned: scored as "other"
    meta["unknown_categories"] = unknown
    meta["caveats"] = [*meta.get("caveats", []), *_unknown_lines(unknown)]
    written = write_report_artifacts(report, meta, folder)
    (folder / "unknown_categories.json").write_text(json.dumps(unknown, indent=2, sort_keys=True))
    for line in _unknown_lines(unknown):
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    overall = report["overall"]

    out.print(f"{name} version {version} on {data} ({overall['n']} patients, {overall['positives']} events): "
              f"AUROC {fmt(overall['auroc'])}, calibration slope {fmt(overall['calibration_slope'])}, "
              f"Brier {fmt(overall['brier'])}, ECE {fmt(overall['ece'])}", highlight=False)
    _print_decision_rule(report["decision"])
    out.print(f"Report: {written['report.html']}", highlight=False)


def _print_decision_rule(section: dict[str, Any]) -> None:
    """The version's decision rule and, for a threshold, how it decides on the data scored."""
    test = section.get("test") or {}
    if section.get("threshold") is None:
        out.print(f"Decision: prior-corrected argmax ({section['rule']})", highlight=False, markup=False)
        return
    rates = ", ".join(f"{k.replace('_', ' ')} {'n/a' if test.get(k) is None else f'{test[k]:.3f}'}"
                      for k in ("sensitivity", "specificity", "balanced_accuracy"))
    out.print(f"Decision: threshold {section['threshold']:.4g} ({section['rule']}): {rates}", highlight=False, markup=False)


def _unknown_lines(unknown: dict[str, dict[str, int]], examples: int = 5) -> list[str]:
    """One line per feature with values the model never learned (scored as ``other``)."""
    lines = []
    for column, counts in sorted(unknown.items()):
        shown = ", ".join(f"{v!r} ({n})" for v, n in list(counts.items())[:examples])
        more = f" and {len(counts) - examples} more" if len(counts) > examples else ""
        lines.append(f"{column}: {sum(counts.values())} values unknown to the model, scored as other: {shown}{more}")
    return lines


@registry_app.command("promote")
@_one_line_errors
def registry_promote(
    version: Annotated[str, typer.Argument(help="An approved version.")],
    api_key: _KeyOpt = None,
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Give an approved version the production alias (serving follows it)."""
    who = _principal(api_key, "clinical_validator")
    registry, name = _registry(model, tracking_uri)
    _print_decision(_audited_decision(who, "promote", name, version,
                                      lambda: registry.promote(name, version, actor=who.identity.display)))


@registry_app.command("rollback")
@_one_line_errors
def registry_rollback(
    to: Annotated[str | None, typer.Option("--to", help="An approved version (default: the previous production one).")] = None,
    api_key: _KeyOpt = None,
    model: _ModelOpt = None,
    tracking_uri: _UriOpt = None,
) -> None:
    """Move production back to the previous approved version (or to --to); admins only."""
    who = _principal(api_key, "admin")
    registry, name = _registry(model, tracking_uri)
    _print_decision(_audited_decision(who, "rollback", name, to or "previous",
                                      lambda: registry.rollback(name, actor=who.identity.display, to_version=to)))


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING)
    app()
