"""What registration logs for any modality's model: its package files, signature and input example."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.artifacts import DECISION_FILE

__all__ = ["PackagedModel", "save_decision"]


@dataclass(frozen=True)
class PackagedModel:
    """A model written as package files, ready for ``mlflow.pyfunc.log_model``.

    Attributes:
        artifacts: File name -> path of each file written.
        python_model: The MLflow pyfunc wrapper that loads those files.
        signature: The MLflow ``ModelSignature`` (input and output columns).
        example: A made-up input example (never a patient's data).
    """

    artifacts: dict[str, str]
    python_model: Any
    signature: Any
    example: Any


def save_decision(directory: Path, decision: Any | None) -> list[str]:
    """Write ``decision.json`` (a :class:`training.decision.Decision`) when given; returns the names written."""
    if decision is None:
        return []
    (directory / DECISION_FILE).write_text(decision.to_json())
    return [DECISION_FILE]
