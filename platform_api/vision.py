"""The API's client of the Ray Serve ``VisionClassifier`` (images are classified there, not in the API process)."""

from __future__ import annotations

import functools
from typing import Any

from platform_api.errors import PayloadTooLarge, Unavailable, UnsupportedMedia
from platform_api.service_client import ServiceClient
from platform_api.settings import get_settings

__all__ = ["IMAGE_SIGNATURES", "VisionClient", "get_vision", "sniff_image_type"]

#: Content type -> the signature its bytes must start with.
IMAGE_SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def sniff_image_type(data: bytes) -> str | None:
    """``image/png`` or ``image/jpeg`` from the bytes themselves, else None."""
    return next((kind for kind, magic in IMAGE_SIGNATURES.items() if data.startswith(magic)), None)


class VisionClient(ServiceClient):
    """Sends images to the VisionClassifier route and returns their classifications.

    Args:
        url: The deployment's route, e.g. ``http://127.0.0.1:8000/vision``.
        timeout: Seconds to wait for an answer.
    """

    service = "vision service"

    async def classify(self, image: bytes, content_type: str) -> dict[str, Any]:
        """``{"label", "probability", "probabilities", "model_name", "model_version"}``.

        Raises:
            Unavailable: the deployment does not answer, or has no model to serve.
            UnsupportedMedia: the deployment could not read the image.
            PayloadTooLarge: the deployment's own size limit refused it.
        """
        response, body, detail = await self._send(content=image, headers={"content-type": content_type})
        if response.status_code == 415:
            raise UnsupportedMedia(f"image: {detail or 'not a readable PNG or JPEG image'}")
        if response.status_code == 413:
            raise PayloadTooLarge(f"image: {detail or 'too large for the vision service'}")
        if response.status_code != 200 or not isinstance(body, dict) or "label" not in body:
            raise Unavailable(f"the vision service answered {response.status_code}"
                              + (f": {detail}" if detail else "") + "; is an image classifier approved for production?")
        return body


    async def classify_many(self, images: list[tuple[str, bytes, str]]) -> list[dict[str, Any]]:
        """Several images (file name, bytes, content type) in one multipart request, classified
        together by the deployment; in their order, each a classification or
        ``{"index", "error": {"status", "detail"}}`` for an image the deployment could not read.

        Raises:
            Unavailable: the deployment does not answer, or has no model to serve.
            PayloadTooLarge: the images together are over the deployment's size limit.
        """
        files = [("image", (name, data, kind)) for name, data, kind in images]
        response, body, detail = await self._send(files=files)
        if response.status_code == 413:
            raise PayloadTooLarge(f"images: {detail or 'too large together for the vision service'}")
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if (response.status_code not in (200, 207, 415) or not isinstance(predictions, list)
                or len(predictions) != len(images)):
            raise Unavailable(f"the vision service answered {response.status_code}"
                              + (f": {detail}" if detail else "") + "; is an image classifier approved for production?")
        return predictions


@functools.cache
def get_vision() -> VisionClient:
    """The process's vision client (``BIOVERSE_API_VISION_URL``)."""
    settings = get_settings()
    return VisionClient(settings.vision_url, settings.vision_timeout_seconds)
