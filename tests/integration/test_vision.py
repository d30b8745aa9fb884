"""Vision end to end, for real: synthetic imaging hospitals -> `bioverse experiment run` (Flower
simulation, DP-SGD CNN, MLflow) -> multi-class validation report and registered version ->
Ray Serve VisionClassifier following `production` -> `POST /v1/twins/{id}/images` in the API."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from experiments.registry import ModelRegistry
from federation.processes import free_port
from serving.model_source import RegistryModel
from tests.integration.conftest import sign_approved, vision_platform
from training.imaging.synth import synthesize_image_hospitals

pytestmark = pytest.mark.integration
MODEL = "it-chest"
CLASSES = ["normal", "nodule", "opacity"]


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three synthetic imaging hospitals and a 2-round DP federation over them, from the CLI."""
    root = tmp_path_factory.mktemp("vision")
    folders = synthesize_image_hospitals(root / "data", n_hospitals=3, images_per_hospital=300, size=28, channels=1,
                                         classes=tuple(CLASSES), layout="folder", seed=5)
    spec = {
        "name": "it-vision", "registered_model": MODEL, "seed": 3,
        "data": {"modality": "images", "classes": CLASSES, "image_size": 28, "channels": 1, "metadata": ["sex", "age"],
                 "hospitals": [{"id": p.name, "path": str(p)} for p in folders]},
        "model": {"kind": "cnn", "width": 8},
        "strategy": {"name": "fedavg", "min_hospitals": 2},
        "training": {"rounds": 3, "local_epochs": 2, "batch_size": 32, "learning_rate": 0.01},
        "privacy": {"enabled": True, "target_epsilon": 8.0, "target_delta": 1e-5, "hospital_budget": 20.0},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(root / "home"), "FLWR_HOME": str(root / "home" / "flwr")}
    bioverse = Path(sys.executable).parent / "bioverse"
    result = subprocess.run([str(bioverse), "experiment", "run", str(root / "spec.yaml"), "--tracking-uri", uri],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"result": result, "uri": uri, "root": root, "folders": folders}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _hospital_images(folder: Path, n: int = 6) -> list[tuple[bytes, str]]:
    labels = pd.read_csv(folder / "labels.csv")
    return [((folder / row.image).read_bytes(), str(row.label)) for row in labels.head(n).itertuples()]


def test_federated_dp_training_registers_a_validated_image_classifier(vision_run: dict[str, Any]) -> None:
    out = vision_run["result"].stdout
    assert "Registered it-chest version 1" in out and "Traceback" not in out + vision_run["result"].stderr
    client = MlflowClient(vision_run["uri"], registry_uri=vision_run["uri"])
    version = client.get_model_version(MODEL, "1")
    tags = version.tags
    assert tags["modality"] == "images" and tags["model_kind"] == "cnn" and tags["dp"] == "true"
    assert 0 < float(tags["epsilon"]) <= 8.0 + 1e-6
    assert tags["validation.status"] == "complete" and tags["validation.hospitals"] == "hospital-01,hospital-02,hospital-03"
    # clearly better than chance on 3 classes (DP noise is unseeded on purpose, so leave a margin)
    assert float(tags["validation.auroc"]) > 0.75 and float(tags["validation.accuracy"]) > 0.45
    run = client.get_run(version.run_id)
    history = client.get_metric_history(run.info.run_id, "evaluate_accuracy")
    assert [m.step for m in history] == [1, 2, 3]

    report = ModelRegistry(vision_run["uri"]).report(MODEL, "1")
    assert report is not None and report["task"] == "multiclass" and report["classes"] == CLASSES
    overall = report["overall"]
    assert overall["n"] > 0 and set(overall["per_class"]) == set(CLASSES)
    assert sorted(report["subgroups"]["hospital"]) == ["hospital-01", "hospital-02", "hospital-03"]
    assert set(report["subgroups"]["sex"]) == {"F", "M"} and report["subgroups"]["age_band"]  # labels.csv metadata
    assert sum(c["n"] for c in report["subgroups"]["sex"].values()) == overall["n"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert {"validation/report.json", "validation/report.html", "validation/confusion.png"} <= artifacts


def test_registered_package_scores_png_bytes_like_the_scorer(vision_run: dict[str, Any]) -> None:
    images = _hospital_images(vision_run["folders"][0])
    mlflow.set_tracking_uri(vision_run["uri"])
    mlflow.set_registry_uri(vision_run["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    frame = pyfunc.predict(pd.DataFrame({"image": [b for b, _ in images]}))
    assert list(frame.columns) == ["label", *(f"p_{c}" for c in CLASSES)]
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    loaded = RegistryModel(vision_run["uri"], MODEL, require_approval=False).load("1")  # a given, unreviewed version
    assert np.allclose(loaded.scorer.predict_bytes([b for b, _ in images]), probs, atol=1e-5)


def test_a_validator_runs_the_report_on_held_out_images_only(vision_run: dict[str, Any], tmp_path: Path) -> None:
    from experiments.spec import load_spec
    from training.imaging.data_check import image_split

    bioverse = Path(sys.executable).parent / "bioverse"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home")}

    def validate(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bioverse), "registry", "validate", "1", "--data", str(data), "--output",
                               str(tmp_path / data.name), "--model", MODEL, "--tracking-uri", vision_run["uri"], *extra],
                              capture_output=True, text=True, env=env, timeout=300)

    trained = vision_run["folders"][1]  # hospital-02's own folder: only the patients its run held out count
    spec = load_spec(vision_run["root"] / "spec.yaml")
    held_out = len(image_split(spec.data, trained, spec.seed).test_labels)  # type: ignore[arg-type]
    done = validate(trained)
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout.replace("\n", " ")
    assert (f"scored {held_out} held-out images (the test part of the run's split of hospital-02's patients (seed 3), "
            f"held out from hospital-02's training); {300 - held_out} images excluded") in said
    assert f"{MODEL} version 1 on {trained} ({held_out} images): accuracy" in said
    report = json.loads((tmp_path / trained.name / "report.json").read_text())
    assert report["task"] == "multiclass" and report["overall"]["n"] == held_out
    assert sum(c["n"] for c in report["subgroups"]["sex"].values()) == held_out  # the spec's metadata subgroups too
    assert (tmp_path / trained.name / "confusion.png").stat().st_size > 0
    everything = validate(trained, "--part", "all")
    lines = [line for line in (everything.stdout + everything.stderr).splitlines() if line.strip()]
    assert everything.returncode == 1 and len(lines) == 1 and "--part all would score the model on its own" in lines[0]

    mine = tmp_path / "mine"  # a validator's own folder, unknown to the registry: every image counts
    synthesize_image_hospitals(mine, n_hospitals=1, images_per_hospital=60, size=28, channels=1, classes=tuple(CLASSES),
                               layout="folder", seed=11)
    own = validate(mine / "hospital-01")
    assert own.returncode == 0, own.stdout + own.stderr
    assert ("scored 60 held-out images (every image: not one of this version's training datasets and no split in "
            "it); none excluded") in own.stdout.replace("\n", " ")
    bad = subprocess.run([str(bioverse), "registry", "validate", "1", "--data", str(tmp_path / "nowhere"), "--model", MODEL,
                          "--tracking-uri", vision_run["uri"]], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), bad.stdout + bad.stderr
    assert "nowhere: no such folder or file" in lines[0]


@pytest.fixture(scope="module")
def serve_vision(vision_run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray + Serve in this process with the vision application on `production` (version 1)."""
    import ray
    from ray import serve

    from serving.app import build_vision_app

    sign_approved(vision_run["uri"], MODEL, "1")  # serving follows only approved versions (the review gate)
    MlflowClient(vision_run["uri"], registry_uri=vision_run["uri"]).set_registered_model_alias(MODEL, "production", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(build_vision_app({"tracking_uri": vision_run["uri"], "model_name": MODEL, "poll_seconds": 0.5,
                                         "max_image_bytes": 200_000, "num_gpus": 0.25}),
                       name="vision", route_prefix="/vision")
    yield {"port": port, "url": f"http://127.0.0.1:{port}/vision", "handle": handle}
    serve.shutdown()
    ray.shutdown()


def test_vision_classifier_serves_production_over_http_with_limits(vision_run: dict[str, Any], serve_vision: dict[str, Any]) -> None:
    url = serve_vision["url"]
    info = httpx.get(url, timeout=30).json()
    assert info["model_version"] == "1" and info["classes"] == CLASSES and info["device"] == "cpu"
    images = _hospital_images(vision_run["folders"][1], n=12)
    answers = [httpx.post(url, content=b, headers={"content-type": "image/png"}, timeout=60) for b, _ in images]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    body = answers[0].json()
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["label"] in CLASSES
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    correct = sum(a.json()["label"] == label for a, (_, label) in zip(answers, images, strict=True))
    assert correct >= 6  # 12 images of a learnable task

    via_handle = serve_vision["handle"].classify.remote(images[0][0]).result()
    assert via_handle["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)

    # several images in one multipart request: one request's overhead, the same answers, in order
    files = [("image", (f"{i}.png", b, "image/png")) for i, (b, _) in enumerate(images[:5])]
    many = httpx.post(url, files=files, timeout=60)
    assert many.status_code == 200, many.text
    predictions = many.json()["predictions"]
    assert [p["label"] for p in predictions] == [a.json()["label"] for a in answers[:5]]
    assert predictions[3]["probabilities"] == pytest.approx(answers[3].json()["probabilities"], abs=1e-6)
    broken = httpx.post(url, files=[*files[:2], ("image", ("x.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))], timeout=60)
    assert broken.status_code == 207, broken.text  # the bad image fails alone, naming itself; the others answer
    answers = broken.json()["predictions"]
    assert answers[2]["error"]["status"] == 415 and answers[2]["error"]["detail"].startswith("image 2 (x.png): ")
    assert [a["label"] for a in answers[:2]] == [p["label"] for p in predictions[:2]]

    refused = [
        (httpx.post(url, content=b"%PDF-1.4 not an image", headers={"content-type": "application/pdf"}, timeout=30), 415,
         "send a PNG or JPEG image"),
        (httpx.post(url, content=b"\x89PNG\r\n\x1a\n truncated", headers={"content-type": "image/png"}, timeout=30), 415,
         "image"),
        (httpx.post(url, content=b"\x89PNG" + bytes(300_000), headers={"content-type": "image/png"}, timeout=30), 413,
         "larger than 200000 bytes"),
    ]
    for answer, status, message in refused:
        assert answer.status_code == status and message in answer.json()["detail"], answer.text


@pytest.fixture()
def vision_api(serve_vision: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The platform API (SQLite) sending image uploads to the running VisionClassifier."""
    with vision_platform(serve_vision["url"], monkeypatch, tmp_path, 100000) as api:
        yield api


def test_image_upload_is_classified_and_stored_on_the_twin(vision_run: dict[str, Any], vision_api: dict[str, Any]) -> None:
    client, headers, twin = vision_api["client"], vision_api["headers"], vision_api["twin"]
    (image, _), = _hospital_images(vision_run["folders"][2], n=1)
    answer = client.post(f"/v1/twins/{twin['id']}/images", files={"image": ("scan.png", image, "image/png")}, headers=headers)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["model_name"] == MODEL and made["model_version"] == "1" and made["label"] in CLASSES
    assert made["content_type"] == "image/png" and made["image_bytes"] == len(image) and len(made["image_sha256"]) == 64
    history = client.get(f"/v1/twins/{twin['id']}/images", headers=headers).json()
    assert history["total"] == 1 and history["items"][0]["id"] == made["id"]
    assert history["items"][0]["probabilities"] == pytest.approx(made["probabilities"])

    other = {"Authorization": f"Bearer {vision_api['keys']['other']}"}  # another tenant's key: not found, nothing stored
    assert client.post(f"/v1/twins/{twin['id']}/images", files={"image": ("s.png", image, "image/png")}, headers=other).status_code == 404

    refused = [
        ({"image": ("notes.txt", b"hello", "text/plain")}, 415, "send a PNG or JPEG file"),
        ({"image": ("fake.png", b"GIF89a....", "image/png")}, 415, "fake.png is not a PNG or JPEG image"),
        ({"image": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(150_000), "image/png")}, 413, "over 100000 bytes"),
        ({"image": ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")}, 415, "image"),
        ({"file": ("scan.png", image, "image/png")}, 422, "image"),
    ]
    for files, status, message in refused:
        bad = client.post(f"/v1/twins/{twin['id']}/images", files=files, headers=headers)
        assert bad.status_code == status and message in json.dumps(bad.json()), bad.text
    assert client.get(f"/v1/twins/{twin['id']}/images", headers=headers).json()["total"] == 1  # nothing half-written


def test_image_upload_without_a_vision_service_is_503(vision_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_api.vision import get_vision

    monkeypatch.setenv("BIOVERSE_API_VISION_URL", f"http://127.0.0.1:{free_port()}/vision")
    from platform_api.settings import get_settings

    get_settings.cache_clear()
    get_vision.cache_clear()
    client, twin = vision_api["client"], vision_api["twin"]
    answer = client.post(f"/v1/twins/{twin['id']}/images", files={"image": ("s.png", _png(np.zeros((28, 28))), "image/png")},
                         headers=vision_api["headers"])
    assert answer.status_code == 503 and "does not answer" in answer.json()["detail"]


def test_a_run_honours_each_hospitals_split(tmp_path: Path) -> None:
    """Through `bioverse experiment run` (Flower simulation): a .npz hospital trains on its
    train arrays only (not val), a folder hospital on the rows its split column marks train;
    the validation report counts exactly the test parts."""
    (folder,) = synthesize_image_hospitals(tmp_path / "f", n_hospitals=1, images_per_hospital=120, size=16, channels=1,
                                           classes=tuple(CLASSES), layout="folder", seed=21)
    (npz,) = synthesize_image_hospitals(tmp_path / "n", n_hospitals=1, images_per_hospital=120, size=16, channels=1,
                                        classes=tuple(CLASSES), layout="npz", seed=22)
    labels = pd.read_csv(folder / "labels.csv", dtype=str)
    patients = sorted(labels["patient_id"].unique())
    part = {p: ("test" if i % 3 == 0 else "Validation" if i % 3 == 1 else "train") for i, p in enumerate(patients)}
    labels["fold"] = labels["patient_id"].map(part)
    labels.to_csv(folder / "labels.csv", index=False)
    spec = {"name": "it-vision-splits", "registered_model": "it-splits", "seed": 1,
            "data": {"modality": "images", "classes": CLASSES, "image_size": 16, "split_column": "fold", "augment": None,
                     "hospitals": [{"id": "folder-site", "path": str(folder)}, {"id": "npz-site", "path": str(npz)}]},
            "model": {"kind": "cnn", "width": 4}, "strategy": {"min_hospitals": 2},
            "training": {"rounds": 1, "local_epochs": 1, "batch_size": 16}, "privacy": {"enabled": False}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home"), "FLWR_HOME": str(tmp_path / "home" / "flwr")}
    bioverse = Path(sys.executable).parent / "bioverse"
    checked = subprocess.run([str(bioverse), "data", "check", str(tmp_path / "spec.yaml")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert checked.returncode == 0 and "split from labels.csv column 'fold'" in " ".join(checked.stdout.split())
    result = subprocess.run([str(bioverse), "experiment", "run", str(tmp_path / "spec.yaml"), "--tracking-uri", uri],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with np.load(npz) as raw:
        npz_train = np.bincount(raw["train_labels"][:, 0], minlength=3).tolist()
        npz_test = len(raw["test_labels"])
    folder_train = [int(((labels["fold"] == "train") & (labels["label"] == c)).sum()) for c in CLASSES]
    folder_test = int((labels["fold"] == "test").sum())
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("it-splits", "1")
    assert int(version.tags["validation.n"]) == npz_test + folder_test  # the test parts, nothing else
    summary = json.loads(Path(client.download_artifacts(version.run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["class_counts"] == {"folder-site": folder_train, "npz-site": npz_train}  # the train parts only
