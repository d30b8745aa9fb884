"""The VisionClassifier deployment: batched image classification with the production model (GPU where present)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.follow import AliasFollower
from serving.loaded import LoadedVisionModel
from serving.model_source import RegistryModel
from training.errors import TrainingError

__all__ = ["IMAGE_TYPES", "MAX_IMAGES_PER_REQUEST", "VisionClassifier", "classify_blobs"]

log = logging.getLogger(__name__)

#: Content types an upload may declare; the bytes are checked too (PNG/JPEG signatures).
IMAGE_TYPES = ("image/png", "image/jpeg")
#: Most images one multipart request may carry.
MAX_IMAGES_PER_REQUEST = 64


def classify_blobs(model: LoadedVisionModel, blobs: list[bytes]) -> list[dict[str, Any]]:
    """Decode and classify encoded images with one model version.

    Each image is decoded with that version's preprocessing (so a version swap between
    arrival and scoring cannot mix image sizes); an unreadable image gets ``{"error": ...}``
    and does not fail its neighbours.
    """
    decoded: list[np.ndarray | None] = []
    errors: dict[int, str] = {}
    for i, blob in enumerate(blobs):
        try:
            decoded.append(model.scorer.decode(blob, name="image"))
        except TrainingError as err:
            decoded.append(None)
            errors[i] = str(err)
    good = [img for img in decoded if img is not None]
    described = iter(model.scorer.describe(model.scorer.predict(np.stack(good)))) if good else iter(())
    results: list[dict[str, Any]] = []
    for i in range(len(blobs)):
        if i in errors:
            results.append({"error": errors[i]})
        else:
            results.append({**next(described), "model_name": model.name, "model_version": model.version})
    return results


def _failure(index: int, name: str, status: int, detail: str) -> dict[str, Any]:
    """One image's refusal inside a many-image answer: its own status and a detail naming it."""
    return {"index": index, "error": {"status": status, "detail": f"image {index} ({name}): {detail}"}}


@serve.deployment(name="VisionClassifier", max_ongoing_requests=32)
class VisionClassifier:
    """Classifies PNG/JPEG images with ``models:/<name>@<alias>``.

    Concurrent requests are batched (``@serve.batch``, up to ``max_batch_size`` requests
    within ``batch_wait_timeout_s``): every image of every request in the batch goes
    through one forward pass, run off the event loop so the next batch gathers meanwhile.
    A request may carry one image or many (multipart); its images stay together as one
    batch item. The alias is followed like the risk model's: a new version loads beside the
    old and is swapped in at once. Every result names the model version that made it.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        model_name: Registered image classifier.
        alias: Alias to follow.
        poll_seconds: How often the alias is checked.
        max_image_bytes: Larger HTTP bodies get 413.
        max_batch_size: Most requests classified in one pass.
        batch_wait_timeout_s: How long a batch waits for more requests once it has one.
    """

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "production", poll_seconds: float = 5.0,
                 max_image_bytes: int = 10 * 1024 * 1024, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.005) -> None:
        self.follower: AliasFollower[LoadedVisionModel] = AliasFollower(
            RegistryModel(tracking_uri, model_name, alias), LoadedVisionModel, poll_seconds=poll_seconds)
        self.max_image_bytes = max_image_bytes
        self._classify_batch.set_max_batch_size(max_batch_size)
        self._classify_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        log.info("VisionClassifier on %s, batches of up to %d requests within %g s", self.model.scorer.device,
                 max_batch_size, batch_wait_timeout_s)

    @property
    def model(self) -> LoadedVisionModel:
        """The version being served now."""
        return self.follower.model

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve ``user_config``: ``poll_seconds``, ``max_image_bytes``, ``max_batch_size``, ``batch_wait_timeout_s``."""
        self.follower.poll_seconds = float(config.get("poll_seconds", self.follower.poll_seconds))
        self.max_image_bytes = int(config.get("max_image_bytes", self.max_image_bytes))
        if "max_batch_size" in config:
            self._classify_batch.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self._classify_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _classify_batch(self, requests: list[list[bytes]]) -> list[list[dict[str, Any]]]:
        model = self.model  # one version for the whole batch
        flat = [blob for blobs in requests for blob in blobs]
        results = await asyncio.to_thread(classify_blobs, model, flat)
        out, start = [], 0
        for blobs in requests:
            out.append(results[start:start + len(blobs)])
            start += len(blobs)
        return out

    async def classify(self, image: bytes) -> dict[str, Any]:
        """One image's classification (from a DeploymentHandle); ``{"error": ...}`` if unreadable."""
        return (await self._classify_batch([image]))[0]

    async def classify_many(self, images: list[bytes]) -> list[dict[str, Any]]:
        """Several images' classifications in order, in one batch item (from a DeploymentHandle)."""
        return await self._classify_batch(list(images))

    async def info(self) -> dict[str, Any]:
        """The version served, its classes, input size and device."""
        model = self.model
        pre = model.scorer.preprocessor
        return {"model_name": model.name, "model_version": model.version, "classes": list(pre.classes),
                "image_size": pre.size, "channels": pre.channels, "device": str(model.scorer.device)}

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP: one image as the body (``Content-Type: image/png`` or ``image/jpeg``) ->
        ``{"label", "probability", "probabilities", "model_name", "model_version"}``; or up
        to :data:`MAX_IMAGES_PER_REQUEST` images as ``multipart/form-data`` file parts ->
        ``{"predictions": [...]}`` in their order, classified together (one request's
        overhead for many images). In a many-image answer an unreadable image is
        ``{"index", "error": {"status": 415, "detail": "image <i> (<file name>): ..."}}`` and
        the others are still classified; the answer is 207 when some failed, and the first
        failure's status when all did. The body may hold ``max_image_bytes`` in all."""
        if request.method == "GET":
            return JSONResponse(await self.info())
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (*IMAGE_TYPES, "multipart/form-data"):
            return JSONResponse({"detail": f"send a PNG or JPEG image (Content-Type {' or '.join(IMAGE_TYPES)}, or "
                                           f"multipart/form-data), not {content_type or 'no content type'}"}, status_code=415)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_image_bytes:
            return self._too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_image_bytes:
                return self._too_large()
        if content_type == "multipart/form-data":
            return await self._many(request, bytes(body))
        (result,) = await self._classify_batch([bytes(body)])
        if "error" in result:
            return JSONResponse({"detail": result["error"]}, status_code=415)
        return JSONResponse(result)

    async def _many(self, request: Request, body: bytes) -> JSONResponse:
        parts = await _form_files(request, body)
        if parts is None:
            return JSONResponse({"detail": "a malformed multipart/form-data body"}, status_code=415)
        if not 1 <= len(parts) <= MAX_IMAGES_PER_REQUEST:
            return JSONResponse({"detail": f"send 1 to {MAX_IMAGES_PER_REQUEST} image files, not {len(parts)}"},
                                status_code=422)
        results = await self._classify_batch([blob for _, blob in parts])
        answers = [_failure(i, name, 415, r["error"]) if "error" in r else r
                   for i, ((name, _), r) in enumerate(zip(parts, results, strict=True))]
        failed = [a for a in answers if "index" in a]
        if len(failed) == len(answers):
            first = failed[0]["error"]
            return JSONResponse({"detail": first["detail"], "predictions": answers}, status_code=first["status"])
        return JSONResponse({"predictions": answers}, status_code=207 if failed else 200)

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body larger than {self.max_image_bytes} bytes"}, status_code=413)


async def _form_files(request: Request, body: bytes) -> list[tuple[str, bytes]] | None:
    """The file parts (file name, bytes) of a multipart body already read (None if it does not parse)."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_IMAGES_PER_REQUEST + 1)
    except Exception:  # noqa: BLE001 - any parse failure is the caller's malformed body
        return None
    return [(value.filename or f"part {i}", await value.read())
            for i, (_, value) in enumerate(form.multi_items()) if not isinstance(value, str)]
