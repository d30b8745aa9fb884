"""Errors raised by the training layer.

Hierarchy::

    TrainingError
    ├── ClassWeightsError      the spec's class_weights cannot be resolved (also a ValueError)
    ├── DataContractError      a hospital file breaks the data contract
    │   ├── DataSplitError     `bioverse data split` cannot split a dataset as asked
    │   ├── ImageDataError     a hospital's images break the image contract
    │   └── ImageDecodeError   bytes that are not a readable PNG or JPEG image
    ├── LocalValidationError   a validator's file has nothing held out to score (`registry validate`)
    ├── PrivacyConfigError     DP settings that cannot be met
    ├── ScoringInputError      a feature value or image a packaged model cannot take (also a ValueError)
    ├── SynthOptionsError      synthetic-hospital options that cannot be met (also a ValueError)
    ├── UnknownModalityError   no modality registered under a spec's data.modality (also a ValueError)
    └── ValidationInputError   malformed predictions, labels or aggregates for a validation
                               report (also a ValueError)
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ClassWeightsError",
    "DataContractError",
    "DataSplitError",
    "ImageDataError",
    "ImageDecodeError",
    "LocalValidationError",
    "PrivacyConfigError",
    "ScoringInputError",
    "SynthOptionsError",
    "TrainingError",
    "UnknownModalityError",
    "ValidationInputError",
]


class TrainingError(Exception):
    """Base class of every error raised by :mod:`training`."""


class ClassWeightsError(TrainingError, ValueError):
    """``training.class_weights`` cannot be resolved: ``balanced`` without class counts, a weight
    for a class the model does not have, or a weight that is not a positive number."""


class DataContractError(TrainingError):
    """A hospital's data file does not satisfy the experiment's data contract.

    Carries the file and, where known, the column and the 1-based data row at fault,
    so the message points a data manager straight at the problem.
    """

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.problem = problem
        self.column = column
        self.row = row
        where = [str(self.path)]
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {problem}")


class DataSplitError(DataContractError):
    """A dataset cannot be split into simulated hospitals as asked (``bioverse data split``):
    unreadable, a column missing or blank, a patient under two centres, too many hospitals."""


class LocalValidationError(TrainingError):
    """``registry validate`` cannot score the part asked for: it is empty, or it holds data
    the version was trained on (the message names the file and the part)."""


class PrivacyConfigError(TrainingError):
    """Differential-privacy settings that are invalid or cannot be reached."""


class ImageDataError(DataContractError):
    """A hospital's image collection breaks the image contract (names the files at fault)."""


class ImageDecodeError(DataContractError):
    """Bytes that are not a readable PNG or JPEG image (``path`` is the image's name)."""


class ScoringInputError(TrainingError, ValueError):
    """A feature value the model cannot take (wrong type, unknown feature, missing column), or
    images of the wrong shape for an image classifier."""


class SynthOptionsError(TrainingError, ValueError):
    """Options of ``bioverse data synth`` / ``synth-images`` that cannot be met (names the option)."""


class ValidationInputError(TrainingError, ValueError):
    """Predictions, labels, subgroups or aggregates that a validation report cannot be built from
    (wrong shape, out of range, unknown schema, aggregates that disagree)."""


class UnknownModalityError(TrainingError, ValueError):
    """No modality is registered under the name a spec's ``data.modality`` gives."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown modality {name!r} (registered: {', '.join(known)})")
