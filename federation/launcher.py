"""Launch an experiment on a Flower engine (local simulation or a deployed SuperLink) and follow it."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from experiments.errors import SpecError, TrackingError
from experiments.spec import ExperimentSpec
from experiments.tracking import mark_run_ended, reconcile_runs
from federation.errors import LaunchError
from federation.processes import child_env, flower_bin, free_port, launcher_identity, stop, wait_for_port
from federation.progress import read_events
from federation.superlink import start_superlink

__all__ = ["Engine", "LaunchOptions", "resume_experiment", "run_experiment", "simulation_gpus"]

Engine = Literal["simulation", "deployment"]
_CONNECTION = "bioverse"


@dataclass(frozen=True)
class LaunchOptions:
    """How and where to run an experiment.

    Attributes:
        engine: ``simulation`` (a private local SuperLink in simulation mode, started and
            stopped here) or ``deployment`` (an existing SuperLink with SuperNodes).
        run_dir: Folder for this run's app bundle, Flower home, logs and progress.
        tracking_uri: MLflow tracking URI the coordinator logs to.
        superlink: ``host:port`` of a deployed SuperLink (deployment only).
        ledger_dir: Where simulated hospitals keep their privacy ledgers.
        client_cpus: CPUs reserved per simulated hospital (fractions allowed).
        client_gpus: GPUs per simulated hospital (fractions share one); None: for image
            models, the GPUs this machine has, shared by the hospitals (at most one each);
            0 elsewhere. Ray hides GPUs from a ClientApp that reserved none.
        timeout: Seconds after which the run is stopped.
        launched_by: Who launches the experiment, as an identity tag (``key:<id>/<person>``
            when the launch is authenticated with an API key, see
            :class:`experiments.gate.Identity`), tagged on the registered version so that they
            cannot approve it; default: ``os:<login>``, which no validator can be compared
            with, so such a version cannot be approved (fail closed).
        root_certificates: The federation's CA certificate: the deployed SuperLink's Control
            API is reached over TLS verified against it (``bioverse coordinator``); None:
            plain HTTP (a loopback SuperLink started with ``--insecure``).
    """

    engine: Engine
    run_dir: Path
    tracking_uri: str
    superlink: str | None = None
    ledger_dir: Path | None = None
    client_cpus: float = 1.0
    client_gpus: float | None = None
    timeout: float = 3600.0
    launched_by: str | None = None
    root_certificates: Path | None = None


def _write_app(app_dir: Path) -> None:
    """A minimal Flower app bundle naming BioVerse's installed apps."""
    app_dir.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "project": {
            "name": "bioverse-federation",
            "version": "0.1.0",
            "description": "BioVerse's federated DP training apps (installed package)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "bioverse",
                    "components": {"serverapp": "federation.server_app:app", "clientapp": "federation.client_app:app"},
                    "config": {"spec": "", "tracking-uri": "", "progress-file": "", "ledger-dir": "", "launched-by": "",
                               "resume-run": ""},
                }
            }
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject))


def _write_flower_home(home: Path, address: str, root_certificates: Path | None = None) -> None:
    connection: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        connection["root-certificates"] = str(root_certificates.resolve())
    else:
        connection["insecure"] = True
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": _CONNECTION, _CONNECTION: connection}}))


@contextlib.contextmanager
def _simulation_superlink(options: LaunchOptions, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = start_superlink(port=port, log_file=options.run_dir / "superlink.log", simulation=True, extra_env=env)
    try:
        wait_for_port(port, 60, process)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def run_experiment(
    spec: ExperimentSpec,
    options: LaunchOptions,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Run ``spec`` to the end and return the coordinator's summary.

    Progress events (``start``, ``statistics``, ``train``, ``evaluate``, ``done``,
    ``error``) are passed to ``on_event`` as the coordinator writes them. ``resume`` (a run
    id) continues that run from its last checkpoint instead (:func:`resume_experiment`).

    Raises:
        LaunchError: the engine failed, the run failed (with the coordinator's reason),
            or it timed out.
    """
    if options.engine == "simulation":
        missing = [h.id for h in spec.data.hospitals if h.path is None or not h.path.exists()]
        if missing:
            first = spec.hospital(missing[0])
            where = f"no file at {first.path}" if first and first.path else "no data path"
            raise SpecError(f"hospital {missing[0]}: {where} (simulation reads every hospital's file)")
    with contextlib.suppress(TrackingError):  # runs whose coordinator died (kill -9) are marked FAILED first
        reconcile_runs(options.tracking_uri)
    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    app_dir, home, progress = run_dir / "app", run_dir / "flwr-home", run_dir / "progress.jsonl"
    _write_app(app_dir)
    overrides = {
        "spec": json.dumps(spec.model_dump(mode="json")),
        "tracking-uri": options.tracking_uri,
        "progress-file": str(progress),
        "ledger-dir": str(options.ledger_dir or ""),
        "launched-by": options.launched_by or launcher_identity(),
        "resume-run": resume or "",
    }
    (run_dir / "run-config.toml").write_text(tomli_w.dumps(overrides))
    env = child_env({
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONWARNINGS": "ignore",
    })
    if options.engine == "simulation":
        link: contextlib.AbstractContextManager[str] = _simulation_superlink(options, env)
    else:
        if not options.superlink:
            raise LaunchError("deployment needs the SuperLink's address (--superlink host:port)")
        link = contextlib.nullcontext(options.superlink)
    with link as address:
        _write_flower_home(home, address, options.root_certificates if options.engine == "deployment" else None)
        federation: list[str] = []
        if options.engine == "simulation":
            cpus = int(options.client_cpus) if float(options.client_cpus).is_integer() else options.client_cpus
            gpus = options.client_gpus if options.client_gpus is not None else simulation_gpus(spec)
            resources = f"client-resources-num-cpus={cpus}" + (f" client-resources-num-gpus={gpus:g}" if gpus > 0 else "")
            federation = [f"num-supernodes={len(spec.data.hospitals)} {resources}"]
        return _run_and_follow(app_dir, run_dir, progress, env, options.timeout, on_event, federation, options.tracking_uri)


def resume_experiment(
    run_id: str,
    options: LaunchOptions,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
    expected: ExperimentSpec | None = None,
) -> dict[str, Any]:
    """Continue a run whose coordinator died from its last checkpoint, under the same MLflow
    run (rounds keep their numbers); returns the coordinator's summary.

    Raises:
        ResumeError: unknown run, finished or still running, no checkpoint, or ``expected``
            (the spec the caller means) differs from the spec the run started with.
        LaunchError: as :func:`run_experiment`.
    """
    from federation.checkpoint import resumable_spec

    with contextlib.suppress(TrackingError):  # a run whose coordinator was killed is marked FAILED first
        reconcile_runs(options.tracking_uri)
    spec, _ = resumable_spec(options.tracking_uri, run_id, expected)
    return run_experiment(spec, options, on_event, resume=run_id)


def simulation_gpus(spec: ExperimentSpec) -> float:
    """GPUs per simulated hospital by default: where the modality uses the GPU (images) the
    hospitals share the machine's GPUs (at most one each); else none (tabular is faster on the CPU)."""
    if not spec.modality.uses_gpu:
        return 0.0
    import torch

    count = torch.cuda.device_count()
    return 0.0 if count == 0 else round(min(1.0, count / len(spec.data.hospitals)), 3)


def _stop_flower_run(log_path: Path, env: dict[str, str]) -> None:
    """Ask the SuperLink to stop the run ``flwr run`` started (its id is in the log)."""
    found = re.search(r"Successfully started run (\d+)", log_path.read_text(errors="replace")) if log_path.exists() else None
    if found:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([flower_bin("flwr"), "stop", found.group(1), _CONNECTION], env=env, capture_output=True, timeout=30)


def _run_and_follow(
    app_dir: Path,
    run_dir: Path,
    progress: Path,
    env: dict[str, str],
    timeout: float,
    on_event: Callable[[dict[str, Any]], None],
    federation_config: list[str],
    tracking_uri: str,
) -> dict[str, Any]:
    command = [flower_bin("flwr"), "run", str(app_dir), _CONNECTION, "--run-config", str(run_dir / "run-config.toml"), "--stream"]
    for item in federation_config:
        command += ["--federation-config", item]
    log_path = run_dir / "flwr-run.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir, start_new_session=True)
        offset, deadline, summary, exited_at, run_id = 0, time.monotonic() + timeout, None, None, None
        try:
            while True:
                events, offset = read_events(progress, offset)
                for event in events:
                    on_event(event)
                    run_id = event.get("run_id", run_id)
                    if event["event"] == "done":
                        summary = event
                    elif event["event"] == "error":
                        raise LaunchError(event.get("message", "the run failed"))
                if summary is not None:
                    return summary
                if process.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 2:  # let the last events land
                        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                        raise LaunchError(
                            f"flwr run exited with code {process.returncode} before the run finished: "
                            + (" | ".join(tail) if tail else f"see {log_path}")
                        )
                if time.monotonic() > deadline:
                    raise LaunchError(f"the run did not finish within {timeout:.0f} s; logs in {run_dir}")
                time.sleep(0.1)
        except (KeyboardInterrupt, LaunchError):
            if summary is None:
                _stop_flower_run(log_path, env)  # a deployed SuperLink would carry on without us
                if run_id is not None:
                    mark_run_ended(tracking_uri, run_id, "KILLED")
            raise
        finally:
            stop(process, grace=5)
