"""Several images per request, for real: the VisionClassifier (local Ray Serve, batch size from the app's args)
and the API's batch image route; a bad image fails alone with its own 4xx naming it, never a 500."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from federation.processes import free_port
from tests.integration.conftest import sign_approved, vision_platform

pytestmark = pytest.mark.integration
MODEL = "batch-xray"
CLASSES = ("normal", "nodule", "opacity")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _register(uri: str) -> None:
    """An (untrained) SmallCNN registered as MODEL, approved, under ``production``."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from experiments.tracking import pip_requirements
    from training.imaging.package import VisionModelPackage, save_vision_package_files, vision_example, vision_signature
    from training.imaging.preprocessing import ImagePreprocessor
    from training.imaging.vision import build_vision_model

    torch.manual_seed(0)
    pre = ImagePreprocessor(size=28, channels=1, mean=(0.5,), std=(0.25,), classes=CLASSES)
    model = build_vision_model("cnn", 1, len(CLASSES), width=8)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("vision-batches")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        artifacts = save_vision_package_files(Path(tmp), model, pre, "cnn", {"width": 8})
        info = mlflow.pyfunc.log_model(name="model", python_model=VisionModelPackage(), artifacts=artifacts,
                                       signature=vision_signature(pre), input_example=vision_example(pre),
                                       pip_requirements=pip_requirements())
    version = str(mlflow.register_model(info.model_uri, MODEL).version)
    sign_approved(uri, MODEL, version)
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(MODEL, "production", version)


@pytest.fixture(scope="module")
def serve_vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Ray + Serve in this process with the vision application (batches of up to 8 requests within 50 ms)."""
    import ray
    from ray import serve

    from serving.app import build_vision_app

    uri = f"sqlite:///{tmp_path_factory.mktemp('vision-batches') / 'mlflow.db'}"
    _register(uri)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(build_vision_app({"tracking_uri": uri, "model_name": MODEL, "max_image_bytes": 200_000,
                                         "max_batch_size": 8, "batch_wait_timeout_s": 0.05}),
                       name="vision", route_prefix="/vision")
    yield {"url": f"http://127.0.0.1:{port}/vision", "handle": handle}
    serve.shutdown()
    ray.shutdown()


def test_the_deployment_classifies_many_images_and_fails_bad_ones_alone(serve_vision: dict[str, Any]) -> None:
    url, handle = serve_vision["url"], serve_vision["handle"]
    images = [_png(i) for i in range(5)]
    one = [httpx.post(url, content=b, headers={"content-type": "image/png"}, timeout=60).json() for b in images]
    assert all(o["model_name"] == MODEL and o["label"] in CLASSES for o in one)

    files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    many = httpx.post(url, files=files, timeout=60)
    assert many.status_code == 200, many.text
    assert [p["probabilities"] for p in many.json()["predictions"]] == [
        pytest.approx(o["probabilities"], abs=1e-6) for o in one]

    bad = [*files[:2], ("image", ("broken.png", b"\x89PNG\r\n\x1a\nxx", "image/png")), files[3]]
    mixed = httpx.post(url, files=bad, timeout=60)
    assert mixed.status_code == 207, mixed.text
    answers = mixed.json()["predictions"]
    assert answers[2]["index"] == 2 and answers[2]["error"]["status"] == 415
    assert answers[2]["error"]["detail"].startswith("image 2 (broken.png): ")
    assert [a.get("label") for a in answers[:2] + answers[3:]] == [one[0]["label"], one[1]["label"], one[3]["label"]]

    none = httpx.post(url, files=[("image", ("a.png", b"", "image/png")), ("image", ("b.png", b"GIF89a", "image/png"))],
                      timeout=60)
    assert none.status_code == 415 and none.json()["detail"].startswith("image 0 (a.png): "), none.text

    # concurrent callers share batches (up to 8 requests, one of several images); each gets its own answers
    responses = [handle.classify_many.remote(images[i:] + images[:i]) for i in range(5)]
    for i, response in enumerate(responses):
        got = response.result()
        assert [g["probabilities"] for g in got] == [pytest.approx(o["probabilities"], abs=1e-6)
                                                     for o in one[i:] + one[:i]]


@pytest.fixture()
def vision_api(serve_vision: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The platform API (SQLite) sending image uploads to the running VisionClassifier."""
    with vision_platform(serve_vision["url"], monkeypatch, tmp_path, 5000) as api:
        yield api


def test_the_api_sends_a_batch_in_one_call_and_stores_the_good_images(vision_api: dict[str, Any]) -> None:
    client, headers, twin = vision_api["client"], vision_api["headers"], vision_api["twin"]
    route = f"/v1/twins/{twin['id']}/images/batch"
    images = [_png(10 + i) for i in range(3)]
    parts = [("images", ("a.png", images[0], "image/png")),
             ("images", ("notes.txt", b"hello", "text/plain")),  # refused by the API itself
             ("images", ("b.png", images[1], "image/png")),
             ("images", ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(50), "image/png")),  # refused by the deployment
             ("images", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(6000), "image/png")),  # over the API's limit
             ("images", ("c.png", images[2], "image/png"))]
    answer = client.post(route, files=parts, headers=headers)
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert (body["classified"], body["failed"]) == (3, 3)
    items = body["items"]
    assert [i["index"] for i in items] == list(range(6))
    failures = {i["index"]: i["error"] for i in items if i["error"]}
    assert {k: v["status"] for k, v in failures.items()} == {1: 415, 3: 415, 4: 413}
    assert failures[1]["detail"].startswith("image 1 (notes.txt): send a PNG or JPEG")
    assert failures[3]["detail"].startswith("image 3 (broken.png): ")
    assert failures[4]["detail"] == "image 4 (big.png): the file is over 5000 bytes"
    made = [i["prediction"] for i in items if i["prediction"]]
    assert all(p["model_name"] == MODEL and p["label"] in CLASSES for p in made)
    history = client.get(f"/v1/twins/{twin['id']}/images", headers=headers).json()
    assert history["total"] == 3 and {h["id"] for h in history["items"]} == {p["id"] for p in made}

    everything_bad = client.post(route, files=[parts[1], parts[3]], headers=headers)
    assert everything_bad.status_code == 415 and everything_bad.json()["detail"].startswith("image 0 (notes.txt): ")
    other = {"Authorization": f"Bearer {vision_api['keys']['other']}"}  # another tenant's twin: not found
    assert client.post(route, files=parts[:1], headers=other).status_code == 404
    too_many = client.post(route, files=[parts[0]] * 65, headers=headers)
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "images"], too_many.text
    assert "64" in too_many.json()["detail"][0]["msg"]
    assert client.get(f"/v1/twins/{twin['id']}/images", headers=headers).json()["total"] == 3  # nothing half-written
