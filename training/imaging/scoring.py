"""Scoring images with a registered image classifier: decode, preprocess, predict.

Used by the Ray Serve ``VisionClassifier`` deployment, the platform API's image uploads
and the MLflow pyfunc wrapper, so all three preprocess exactly as training did.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from training.artifacts import DECISION_FILE, MODEL_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE
from training.decision import Decision
from training.errors import ScoringInputError
from training.imaging.decode import decode_image
from training.imaging.local import predict_vision
from training.imaging.preprocessing import ImagePreprocessor
from training.imaging.vision import VisionModel, build_vision_model, default_device

__all__ = ["VisionScorer"]



class VisionScorer:
    """An image classifier ready to score: network (on the device), preprocessor, classes.

    Args:
        model: The trained network.
        preprocessor: Size, channels, normalisation and class names agreed by the federation.
        device: Where to run; default :func:`training.imaging.vision.default_device` (a GPU if the
            process sees one).
    """

    def __init__(self, model: VisionModel, preprocessor: ImagePreprocessor, device: torch.device | str | None = None,
                 decision: Decision | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        #: How probabilities become the served label (threshold or prior correction); the
        #: plain argmax for packages registered before decision rules.
        self.decision = decision or Decision.default()
        self.model = model.to(self.device).eval()
        self.preprocessor = preprocessor
        self._lock = threading.Lock()  # one forward pass at a time per scorer (GPU memory, threads)

    @classmethod
    def from_files(cls, directory: Path | str, device: torch.device | str | None = None) -> VisionScorer:
        """Load a package's ``model.json``, ``preprocessor.json`` and ``weights.pt``.

        Raises:
            ValueError: the folder holds no image classifier package.
            OSError: a file cannot be read.
        """
        directory = Path(directory)
        meta = json.loads((directory / MODEL_FILE).read_text())
        if meta.get("modality") != "images":
            raise ValueError(f"{directory}: not an image classifier package")
        preprocessor = ImagePreprocessor.from_json((directory / PREPROCESSOR_FILE).read_text())
        model = build_vision_model(meta["kind"], int(meta["in_channels"]), int(meta["num_classes"]), **meta["hparams"])
        model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        decision = Decision.from_json((directory / DECISION_FILE).read_text()) if (directory / DECISION_FILE).exists() else None
        return cls(model, preprocessor, device, decision)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in the order of the probability columns."""
        return tuple(self.preprocessor.classes)

    def decode(self, data: bytes, name: str = "upload") -> np.ndarray:
        """One PNG/JPEG as the model's uint8 (C, H, W) input.

        Raises:
            ImageDecodeError: not a readable PNG or JPEG (the message names ``name``).
        """
        return decode_image(data, size=self.preprocessor.size, channels=self.preprocessor.channels, name=name)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of decoded uint8 images (N, C, H, W)."""
        if images.ndim != 4 or images.shape[1:] != (self.preprocessor.channels, self.preprocessor.size, self.preprocessor.size):
            raise ScoringInputError(f"expected images of shape (N, {self.preprocessor.channels}, {self.preprocessor.size}, "
                             f"{self.preprocessor.size}), got {images.shape}")
        with self._lock:
            return predict_vision(self.model, images, mean=self.preprocessor.mean, std=self.preprocessor.std,
                                  device=self.device)

    def predict_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Class probabilities (N, K) of encoded images; a bad image is named by its index."""
        if not blobs:
            return np.zeros((0, len(self.classes)))
        return self.predict(np.stack([self.decode(b, name=f"image {i}") for i, b in enumerate(blobs)]))

    def describe(self, probs: np.ndarray) -> list[dict[str, object]]:
        """Per image: the class the version's decision rule picks (a threshold on the second
        class for two classes, a prior-corrected argmax for more), its probability and all
        class probabilities."""
        out = []
        rows = np.asarray(probs, dtype=float)
        for row, k in zip(rows, self.decision.labels(rows).tolist(), strict=True):
            out.append({"label": self.classes[k], "probability": float(row[k]),
                        "probabilities": {c: float(p) for c, p in zip(self.classes, row, strict=True)}})
        return out
