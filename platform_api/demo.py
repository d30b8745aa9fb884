"""The demo: fresh synthetic hospitals and a DP experiment spec over them."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from rich.console import Console

from experiments.spec import ExperimentSpec, load_spec

__all__ = ["prepare_demo", "prepare_vision_demo", "showcase"]


def prepare_demo(directory: Path, *, hospitals: int, patients: int, rounds: int, seed: int, console: Console) -> tuple[ExperimentSpec, Path]:
    """Synthesise hospitals into ``directory`` and write the demo spec beside them.

    The demo's hospitals are new patients each time, so their privacy ledgers start
    afresh (``directory/ledgers``); a real hospital's ledger is never reset.

    Returns:
        The loaded spec and the demo hospitals' ledger folder.
    """
    from training.tabular.synth import (
        FEATURE_RANGES,
        FEATURES_CATEGORICAL,
        FEATURES_NUMERIC,
        LABEL,
        PATIENT_ID,
        synthesize_hospitals,
    )

    data_dir, ledgers = directory / "hospitals", directory / "ledgers"
    shutil.rmtree(ledgers, ignore_errors=True)
    written = synthesize_hospitals(n_hospitals=hospitals, n_patients=patients, seed=seed, out_dir=data_dir)
    console.print(f"Synthesised {hospitals} hospitals ({patients} patients) in {data_dir}", highlight=False)
    spec = {
        "name": "demo-cardiac-risk",
        "registered_model": "cardiac-risk",
        "description": "BioVerse demo: cardiac event risk across synthetic hospitals with DP-SGD.",
        "seed": seed,
        "data": {
            "patient_id": PATIENT_ID,
            "label": LABEL,
            "numeric": list(FEATURES_NUMERIC),
            "categorical": list(FEATURES_CATEGORICAL),
            "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
            "hospitals": [{"id": h.hospital_id, "path": str(h.path.relative_to(directory))} for h in written],
        },
        "model": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.0},
        "strategy": {"name": "fedavg", "min_hospitals": max(1, hospitals // 2)},
        "training": {"rounds": rounds, "local_epochs": 2, "batch_size": 64, "learning_rate": 0.02},
        "privacy": {"enabled": True, "target_epsilon": 3.0, "target_delta": 1e-5, "max_grad_norm": 1.0,
                    "grad_sample_mode": "fused", "hospital_budget": 10.0},
    }
    path = directory / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(path), ledgers


def prepare_vision_demo(directory: Path, *, rounds: int, seed: int, console: Console,
                        images: int = 800) -> tuple[ExperimentSpec, Path]:
    """Synthesise three imaging hospitals (chest images of three classes) into ``directory``
    and write a DP image-classifier spec beside them; returns the spec and its ledger folder."""
    from training.imaging.synth import synthesize_image_hospitals

    data_dir, ledgers = directory / "hospitals", directory / "ledgers"
    shutil.rmtree(ledgers, ignore_errors=True)
    classes = ("normal", "nodule", "opacity")
    folders = synthesize_image_hospitals(data_dir, n_hospitals=3, images_per_hospital=images, size=28, channels=1,
                                         classes=classes, layout="folder", seed=seed)
    console.print(f"Synthesised 3 imaging hospitals ({3 * images} chest images, {', '.join(classes)}) in {data_dir}",
                  highlight=False)
    spec = {
        "name": "demo-chest-xray",
        "registered_model": "chest-xray",
        "description": "BioVerse demo: chest image triage across synthetic hospitals with DP-SGD.",
        "seed": seed,
        "data": {"modality": "images", "classes": list(classes), "image_size": 28, "channels": 1, "metadata": ["sex", "age"],
                 "hospitals": [{"id": f.name, "path": str(f.relative_to(directory))} for f in folders]},
        "model": {"kind": "cnn", "width": 16},
        "strategy": {"name": "fedavg", "min_hospitals": 2},
        "training": {"rounds": rounds, "local_epochs": 2, "batch_size": 32, "learning_rate": 0.005},
        "privacy": {"enabled": True, "target_epsilon": 8.0, "target_delta": 1e-5, "max_grad_norm": 1.0,
                    "grad_sample_mode": "hooks", "hospital_budget": 20.0},
    }
    path = directory / "demo-imaging.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(path), ledgers


def showcase(*, spec: ExperimentSpec, tracking_uri: str, console: Console,
             twins: int = 5, vision_spec: ExperimentSpec | None = None) -> None:
    """After training: ingest the hospitals into Feast, serve the new version with Ray Serve
    and the platform API, and print a few twins of the first hospital with their predictions;
    with ``vision_spec``, serve its image classifier too and classify an image per twin
    through the API.

    The new version is unreviewed, so the demo serves the ``candidate`` alias; apps in
    production follow ``production``, which only a clinical validator's approval sets.
    """
    import contextlib
    import io
    import os
    import threading
    import time
    import warnings

    import httpx
    import pandas as pd
    import uvicorn
    from rich.table import Table

    from experiments.tracking import CANDIDATE_ALIAS
    from feature_store.configured import configured_repo
    from federation.processes import free_port
    from platform_api import services
    from platform_api.auth import create_key
    from platform_api.db import migrate, session_factory
    from platform_api.main import create_app
    from platform_api.settings import get_settings

    warnings.filterwarnings("ignore")  # libraries' deprecation notices are not the demo's business
    started = time.perf_counter()
    repo = configured_repo(init=True)  # the profile's online store and registry
    frames = {h.id: pd.read_csv(h.path) for h in spec.data.hospitals}
    for tenant, frame in frames.items():
        repo.ingest(frame, tenant_id=tenant)
    with contextlib.redirect_stdout(io.StringIO()):  # Feast's own progress lines
        repo.materialize()
    console.print(f"Features: {sum(len(f) for f in frames.values())} patients of {len(frames)} hospitals ingested into "
                  f"Feast and materialized in {time.perf_counter() - started:.1f} s ({repo.repo_dir})", highlight=False)

    # the API scores in-process from the registry; point it at this run's unreviewed version
    os.environ["BIOVERSE_API_MODEL_ALIAS"] = CANDIDATE_ALIAS
    os.environ["BIOVERSE_API_MODEL_NAME"] = spec.registered_model
    os.environ.setdefault("BIOVERSE_TRACKING_URI", tracking_uri)
    serve_port = free_port()
    os.environ["BIOVERSE_API_VISION_URL"] = f"http://127.0.0.1:{serve_port}/vision"
    get_settings.cache_clear()
    services.reset()
    settings = get_settings()
    migrate(settings.resolved_database_url())
    tenant = spec.data.hospitals[0].id
    with session_factory()() as session:
        token = create_key(session, role="app", tenant_id=tenant, name="bioverse demo")

    handle = _start_serving(tracking_uri, spec.model_name, console, serve_port,
                            vision_model=vision_spec.model_name if vision_spec is not None else None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bioverse-demo-api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            _wait_ready(api)
            rows = []
            for patient in frames[tenant]["patient_id"].head(twins):
                twin = _twin_of(api, str(patient))
                made = api.post(f"/v1/twins/{twin['id']}/predictions")
                made.raise_for_status()
                prediction = made.json()
                served = handle.predict.remote(prediction["inputs"]).result() if handle is not None else None
                rows.append((twin, prediction, served))
        version = rows[0][1]["model_version"] if rows else "?"
        table = Table(title=f"Twins of {tenant}: features from Feast, risk from {spec.registered_model} version {version} "
                            f"({CANDIDATE_ALIAS}) via the API and via Ray Serve", title_justify="left")
        for column in ("patient", "age", "sys bp", "smoking", "API risk", "Serve risk", "alert"):
            table.add_column(column, justify="right" if column.startswith(("age", "sys", "API", "Serve")) else "left", no_wrap=True)
        for twin, prediction, served in rows:
            inputs = prediction["inputs"]
            table.add_row(twin["patient_id"], _fmt(inputs.get("age"), "{:.0f}"), _fmt(inputs.get("systolic_bp"), "{:.0f}"),
                          str(inputs.get("smoking") or "-"), f"{prediction['risk']:.3f}",
                          f"{served['risk']:.3f}" if served else "-", prediction["alert_priority"] or "-")
        console.print(table)
        if vision_spec is not None and rows:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
                _show_images(api, [twin for twin, _, _ in rows], vision_spec, console)
        console.print(f"API key for {tenant} (app role, shown once): {token}\n"
                      f"Keep the API up with `BIOVERSE_API_MODEL_ALIAS={CANDIDATE_ALIAS} bioverse api`, then e.g.\n"
                      f"  curl -H 'Authorization: Bearer {token}' http://127.0.0.1:8080/v1/twins", highlight=False, soft_wrap=True)
    finally:
        server.should_exit = True
        thread.join(10)
        _stop_serving(handle)


def _fmt(value: object, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _wait_ready(api: object) -> None:
    import time

    import httpx

    for _ in range(200):
        try:
            if api.get("/readyz").status_code == 200:  # type: ignore[attr-defined]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the platform API did not start")


def _twin_of(api: object, patient_id: str) -> dict:
    """The patient's twin, created on first use (the demo can run again on the same data)."""
    made = api.post("/v1/twins", json={"patient_id": patient_id})  # type: ignore[attr-defined]
    if made.status_code == 409:
        return api.get("/v1/twins", params={"patient_id": patient_id}).json()["items"][0]  # type: ignore[attr-defined]
    made.raise_for_status()
    return made.json()


def _show_images(api: object, twins: list[dict], vision_spec: ExperimentSpec, console: Console) -> None:
    """Upload one image of the imaging hospitals per twin to ``POST /v1/twins/{id}/images``."""
    import pandas as pd
    from rich.table import Table

    from experiments.tracking import CANDIDATE_ALIAS

    folder = vision_spec.data.hospitals[0].path
    assert folder is not None
    labels = pd.read_csv(folder / "labels.csv").sample(n=len(twins), random_state=0)
    table = Table(title=f"Images classified via the API by the Ray Serve VisionClassifier ({vision_spec.model_name}, "
                        f"{CANDIDATE_ALIAS})", title_justify="left")
    for column in ("patient", "image", "truth", "predicted", "prob.", "version"):
        table.add_column(column, justify="right" if column == "prob." else "left", no_wrap=True)
    for twin, row in zip(twins, labels.itertuples(), strict=False):
        image = folder / str(row.image)
        made = api.post(f"/v1/twins/{twin['id']}/images",  # type: ignore[attr-defined]
                        files={"image": (image.name, image.read_bytes(), "image/jpeg" if image.suffix == ".jpg" else "image/png")})
        made.raise_for_status()
        result = made.json()
        table.add_row(twin["patient_id"], image.name, str(row.label), result["label"], f"{result['probability']:.2f}",
                      result["model_version"])
    console.print(table)


def _start_serving(tracking_uri: str, model_name: str, console: Console, port: int,
                   vision_model: str | None = None) -> object | None:
    """The RiskPredictor (and the VisionClassifier) on a local Ray (in-process), following
    the candidate alias, HTTP on ``port``."""
    import logging
    import os
    import time

    started = time.perf_counter()
    import ray
    from ray import serve

    from experiments.tracking import CANDIDATE_ALIAS
    from serving.app import build_risk_app, build_vision_app

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # serve.run's notice that the port is already chosen
    handle = serve.run(build_risk_app({"tracking_uri": tracking_uri, "model_name": model_name, "alias": CANDIDATE_ALIAS}),
                       name="risk", route_prefix="/risk")
    served = f"RiskPredictor for {model_name}@{CANDIDATE_ALIAS}"
    if vision_model is not None:
        serve.run(build_vision_app({"tracking_uri": tracking_uri, "model_name": vision_model, "alias": CANDIDATE_ALIAS}),
                  name="vision", route_prefix="/vision")
        served += f" and VisionClassifier for {vision_model}@{CANDIDATE_ALIAS}"
    console.print(f"Serving: Ray Serve {served} up in {time.perf_counter() - started:.1f} s "
                  f"(http://127.0.0.1:{port}/risk, /vision)", highlight=False)
    return handle


def _stop_serving(handle: object | None) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # takes Serve's actors with it
