"""Images of twins: uploads classified by the VisionClassifier deployment, results stored on the twin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile, status

from platform_api import crud
from platform_api.audit import audited
from platform_api.deps import ImageScorerDep, LimitQuery, OffsetQuery, PatientReader, PatientWriter, SessionDep
from platform_api.errors import PayloadTooLarge, UnsupportedMedia
from platform_api.schemas import ImagePredictionPage, ImagePredictionPublic
from platform_api.settings import get_settings
from platform_api.vision import IMAGE_SIGNATURES, sniff_image_type

__all__ = ["router"]

router = APIRouter(prefix="/v1/twins", tags=["images"])

ImageUpload = Annotated[UploadFile, File(description="A PNG or JPEG image (grayscale or colour).")]


async def _read_image(image: UploadFile) -> tuple[bytes, str]:
    """The upload's bytes and its real type; 413 over the limit, 415 unless PNG or JPEG."""
    limit = get_settings().max_image_bytes
    declared = (image.content_type or "").split(";")[0].strip().lower()
    if declared not in IMAGE_SIGNATURES:
        raise UnsupportedMedia(f"image: send a PNG or JPEG file (image/png or image/jpeg), not {declared or 'an untyped file'}")
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"image: the file is over {limit} bytes")
    kind = sniff_image_type(data)
    if kind is None:
        raise UnsupportedMedia(f"image: {image.filename or 'the file'} is not a PNG or JPEG image" if data
                               else "image: the file is empty")
    return data, kind


@router.post("/{twin_id}/images", status_code=status.HTTP_201_CREATED, response_model=ImagePredictionPublic,
             responses={413: {"description": "The image is over the size limit"},
                        415: {"description": "Not a readable PNG or JPEG image"},
                        503: {"description": "The vision service does not answer"}},
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {
                 "encoding": {"image": {"contentType": "image/png, image/jpeg"}}}}}})
async def classify_image(twin_id: str, image: ImageUpload, caller: PatientWriter, scorer: ImageScorerDep) -> Response:
    """Classify an image of the twin's patient with the production image classifier.

    The result is stored on the twin with the model version that made it and the image's
    SHA-256; the image itself is not kept. Multipart form, field ``image``.
    """
    public = await scorer.classify(caller, twin_id, lambda: _read_image(image))
    return Response(content=public.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type="application/json")


@router.get("/{twin_id}/images", response_model=ImagePredictionPage)
def image_history(twin_id: str, session: SessionDep, caller: PatientReader, limit: LimitQuery = 50,
                  offset: OffsetQuery = 0) -> ImagePredictionPage:
    """A twin's image classifications, newest first."""
    with audited(session, caller, f"image_prediction.list:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        items, total = crud.list_image_predictions(session=session, twin_id=twin.id, limit=limit, offset=offset)
        page = ImagePredictionPage(items=[ImagePredictionPublic.model_validate(p) for p in items], total=total,
                                   limit=limit, offset=offset)
    return page
