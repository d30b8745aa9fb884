"""Several images of one twin in one request: checked each, classified together by the vision deployment, recorded at once."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from platform_api.auth import TenantPrincipal
from platform_api.errors import PayloadTooLarge, PlatformError, UnsupportedMedia
from platform_api.metrics import ApiMetrics
from platform_api.recorder import Recorder, Unit
from platform_api.schemas import ImagePredictionPublic
from platform_api.scoring import TwinPatients
from platform_api.vision import VisionClient

__all__ = ["ImageBatchItem", "ImageBatchPublic", "ImageBatchScorer", "ImageFailure", "ImageUpload"]

#: Status of an image the API refused itself, by its error.
_STATUS = {PayloadTooLarge: 413, UnsupportedMedia: 415}


class ImageFailure(BaseModel):
    """Why one image of a batch was not classified: its own 4xx and a detail naming it."""

    status: int
    detail: str


class ImageBatchItem(BaseModel):
    """One image of a batch, in the order sent: its stored classification, or its failure."""

    model_config = {"protected_namespaces": ()}
    index: int
    filename: str
    prediction: ImagePredictionPublic | None = None
    error: ImageFailure | None = None


class ImageBatchPublic(BaseModel):
    """The answer to a batch of images: every image, classified or refused, and the counts."""

    items: list[ImageBatchItem]
    classified: int
    failed: int


@dataclass(frozen=True)
class ImageUpload:
    """One uploaded image as the route read it: its bytes and real type, or the API's own refusal."""

    filename: str
    data: bytes = b""
    kind: str = ""
    refused: PlatformError | None = None


@dataclass(frozen=True)
class ImageBatchScorer:
    """Classifications of several images of a tenant's twin in one call to the vision deployment.

    The twin is checked first (another tenant's twin: 404, nothing sent); images the API
    refuses itself (type, size) and images the deployment cannot read fail alone, each with
    its own 4xx naming it. The classified ones and the request's audit event are committed
    together. If every image fails, the first failure is raised (4xx, audited).
    """

    patients: TwinPatients
    recorder: Recorder
    vision: VisionClient
    metrics: ApiMetrics | None

    async def classify(self, caller: TenantPrincipal, twin_id: str, uploads: list[ImageUpload]) -> ImageBatchPublic:
        """Classify ``uploads`` of the twin's patient; the stored results and failures in order."""
        audit = {"actor": caller.key_id, "role": caller.role, "tenant_id": caller.tenant_id, "patient_id": None,
                 "action": f"image_prediction.batch:{twin_id[:40]}", "outcome": "ok"}
        try:
            audit["patient_id"] = (await self.patients.of(caller.tenant_id, [twin_id]))[twin_id]
            items = await self._items(caller.tenant_id, twin_id, uploads)
            failures = [i.error for i in items if i.error is not None]
            if len(failures) == len(items):
                raise (PayloadTooLarge if failures[0].status == 413 else UnsupportedMedia)(failures[0].detail)
        except Exception as err:
            audit["outcome"] = type(err).__name__.lower()
            await asyncio.wrap_future(self.recorder.submit(Unit(audit)))
            raise
        rows = [self._row(caller.tenant_id, i.prediction) for i in items if i.prediction is not None]
        await asyncio.wrap_future(self.recorder.submit(Unit(audit, image_predictions=rows)))
        if self.metrics is not None and rows:
            self.metrics.observe_prediction(rows[0]["model_name"], rows[0]["model_version"], len(rows))
        return ImageBatchPublic(items=items, classified=len(rows), failed=len(items) - len(rows))

    async def _items(self, tenant: str, twin_id: str, uploads: list[ImageUpload]) -> list[ImageBatchItem]:
        """Every upload's item: the API's refusals, then one vision call for the rest."""
        items: list[ImageBatchItem | None] = [None] * len(uploads)
        send: list[int] = []
        for index, upload in enumerate(uploads):
            if upload.refused is not None:
                status = next(code for kind, code in _STATUS.items() if isinstance(upload.refused, kind))
                items[index] = ImageBatchItem(index=index, filename=upload.filename, error=ImageFailure(
                    status=status, detail=f"image {index} ({upload.filename}): {upload.refused}"))
            else:
                send.append(index)
        if send:
            answers = await self.vision.classify_many([(uploads[i].filename, uploads[i].data, uploads[i].kind) for i in send])
            now = datetime.now(UTC).replace(tzinfo=None)
            for index, answer in zip(send, answers, strict=True):
                upload = uploads[index]
                error = answer.get("error") if isinstance(answer, dict) else {"status": 415, "detail": "no answer"}
                if error is not None:
                    items[index] = ImageBatchItem(index=index, filename=upload.filename, error=ImageFailure(
                        status=int(error.get("status", 415)),
                        detail=f"image {index} ({upload.filename}): {_reason(str(error.get('detail', 'not readable')))}"))
                else:
                    items[index] = ImageBatchItem(index=index, filename=upload.filename,
                                                  prediction=_public(twin_id, upload, answer, now))
        return [i for i in items if i is not None]

    @staticmethod
    def _row(tenant: str, public: ImagePredictionPublic) -> dict[str, Any]:
        return {**public.model_dump(), "tenant_id": tenant, "created_at": public.created_at.replace(tzinfo=None)}


def _reason(detail: str) -> str:
    """The deployment's detail without its own ``image <i> (<name>):`` prefix (its indexes are of the images sent)."""
    head, sep, rest = detail.partition("): ")
    return rest if sep and head.startswith("image ") else detail


def _public(twin_id: str, upload: ImageUpload, result: dict[str, Any], now: datetime) -> ImagePredictionPublic:
    return ImagePredictionPublic(
        id=str(uuid.uuid4()), twin_id=twin_id, label=str(result["label"]), probability=float(result["probability"]),
        probabilities={str(k): float(v) for k, v in result["probabilities"].items()},
        model_name=str(result["model_name"]), model_version=str(result["model_version"]),
        image_sha256=hashlib.sha256(upload.data).hexdigest(), image_bytes=len(upload.data), content_type=upload.kind,
        created_at=now)
