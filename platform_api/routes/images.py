"""Images of twins: uploads classified by the VisionClassifier deployment, results stored on the twin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile, status

from platform_api import crud
from platform_api.audit import audited
from platform_api.deps import (
    ImageBatchScorerDep,
    ImageScorerDep,
    LimitQuery,
    OffsetQuery,
    PatientReader,
    PatientWriter,
    SessionDep,
)
from platform_api.errors import PayloadTooLarge, UnsupportedMedia
from platform_api.image_batches import ImageBatchPublic, ImageUpload
from platform_api.schemas import ImagePredictionPage, ImagePredictionPublic
from platform_api.settings import get_settings
from platform_api.vision import IMAGE_SIGNATURES, sniff_image_type

__all__ = ["router"]

router = APIRouter(prefix="/v1/twins", tags=["images"])

ImageFile = Annotated[UploadFile, File(description="A PNG or JPEG image (grayscale or colour).")]
#: Most images one batch request may carry (the vision deployment's own limit).
MAX_IMAGES = 64
ImageFiles = Annotated[list[UploadFile], File(min_length=1, max_length=MAX_IMAGES,
                                              description="1 to 64 PNG or JPEG images, each its own `images` part.")]


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
async def classify_image(twin_id: str, image: ImageFile, caller: PatientWriter, scorer: ImageScorerDep) -> Response:
    """Classify an image of the twin's patient with the production image classifier.

    The result is stored on the twin with the model version that made it and the image's
    SHA-256; the image itself is not kept. Multipart form, field ``image``.
    """
    public = await scorer.classify(caller, twin_id, lambda: _read_image(image))
    return Response(content=public.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type="application/json")


async def _upload(image: UploadFile) -> ImageUpload:
    """One image of a batch as read: its bytes and type, or why the API refuses it (413/415)."""
    name = (image.filename or "")[:200]
    try:
        data, kind = await _read_image(image)
    except (PayloadTooLarge, UnsupportedMedia) as err:
        return ImageUpload(filename=name, refused=type(err)(str(err).removeprefix("image: ")))
    return ImageUpload(filename=name, data=data, kind=kind)


@router.post("/{twin_id}/images/batch", status_code=status.HTTP_201_CREATED, response_model=ImageBatchPublic,
             responses={207: {"model": ImageBatchPublic,
                              "description": "Some images classified and stored; each other one has its own 4xx naming it"},
                        413: {"description": "Every image refused; the first was over the size limit"},
                        415: {"description": "Every image refused; the first was not a readable PNG or JPEG image"},
                        503: {"description": "The vision service does not answer"}})
async def classify_images(twin_id: str, images: ImageFiles, caller: PatientWriter, scorer: ImageBatchScorerDep) -> Response:
    """Classify several images of the twin's patient in one call to the image classifier.

    Multipart form, one ``images`` part per image (1 to 64). The images are classified
    together (one request to the vision deployment, one batch there); each result is stored
    on the twin like a single upload's. An image that cannot be classified fails alone:
    its item carries its own status (413, 415) and a detail naming it (``image 2 (x.png): ...``),
    and the answer is 207; the others are still classified and stored. If every image fails,
    the answer is the first one's 4xx and nothing is stored.
    """
    uploads = [await _upload(image) for image in images]
    public = await scorer.classify(caller, twin_id, uploads)
    code = status.HTTP_201_CREATED if not public.failed else status.HTTP_207_MULTI_STATUS
    return Response(content=public.model_dump_json(), status_code=code, media_type="application/json")


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
