"""The file names inside a packaged model, in one place (written at registration, read by every scorer)."""

from __future__ import annotations

__all__ = ["ARRAYS_FILE", "DECISION_FILE", "ENCODER_FILE", "MODEL_FILE", "PREPROCESSOR_FILE", "WEIGHTS_FILE"]

#: What the package holds: ``{"kind", "hparams", ...}``, and ``"modality"`` for a non-tabular model.
MODEL_FILE = "model.json"
#: The network's weights (PyTorch ``state_dict``).
WEIGHTS_FILE = "weights.pt"
#: The same weights as NumPy arrays: scoring a risk model needs no PyTorch.
ARRAYS_FILE = "weights.npz"
#: A risk model's feature encoder, built by the federation.
ENCODER_FILE = "encoder.json"
#: An image model's preprocessor (size, channels, normalisation, classes).
PREPROCESSOR_FILE = "preprocessor.json"
#: The decision rule inside a model package (covered by the approval's artifact digest).
DECISION_FILE = "decision.json"
