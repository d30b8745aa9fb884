"""The imaging ``data:`` and ``model:`` sections of an experiment spec (``data.modality: images``) and its DP defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from training.data_section import DataSection, HospitalSpec, StrictSection, unique_hospitals
from training.model_section import ModelSection

if TYPE_CHECKING:
    from training.imaging.data import ImageContract

__all__ = ["DP_IMAGE_DEFAULTS", "AugmentSpec", "ImageDataSpec", "ImageModelSpec"]

#: DP-SGD on images (docs/dp-training.md gives the measurements): a clipping bound near a
#: fresh CNN's per-image gradient norms (10), SGD at a small learning rate rather than Adam,
#: batch 32 for more steps per round.
DP_IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {"optimizer": "sgd", "learning_rate": 0.005, "batch_size": 32, "local_epochs": 1},
    "privacy": {"max_grad_norm": 10.0},
}


class AugmentSpec(StrictSection):
    """Random augmentation of training images (per image, on the training device).

    Flips are off by default: in radiology left and right are not interchangeable.
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = Field(default=10.0, ge=0, le=180, description="max rotation, degrees")
    translate: float = Field(default=0.1, ge=0, le=0.5, description="max shift, fraction of the side")
    brightness: float = Field(default=0.1, ge=0, le=1)
    contrast: float = Field(default=0.1, ge=0, le=1)


ClassName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^,\s][^,]*$")]


class ImageDataSpec(DataSection):
    """The imaging contract: every hospital holds a folder of PNG/JPEG images with a labels
    CSV (image file, patient id, label), or a MedMNIST-layout ``.npz``.

    Attributes:
        classes: The class names, in the order of the model's outputs; CSV labels are these
            names (or their indices), ``.npz`` labels their indices.
        image_size: Every image is resized to this many pixels square.
        channels: 1 (grayscale) or 3 (RGB); images are converted.
        mean, std: Per-channel normalisation of pixel values in [0, 1]; when not given the
            federation computes the pooled mean and standard deviation from the hospitals'
            pixel sums (the statistics round).
        augment: Training augmentation, or null for none.
        metadata: Further ``labels.csv`` columns (e.g. ``sex``, ``age``) carried with each
            image for the validation report's subgroups; folders only (a ``.npz`` has none).
        split_column: A ``labels.csv`` column naming each image's part (train, val, test;
            case-insensitive, validation/valid = val), then required in every folder's
            ``labels.csv``; a ``.npz`` always keeps its train/val/test arrays. Without it,
            folders are split by patient with ``test_fraction`` and ``val_fraction``.
        val_fraction: Share of patients set apart (from the training patients) as the val
            part (model selection, never trained on); 0 = none. Random split only.
    """

    modality: Literal["images"]
    classes: list[ClassName] = Field(min_length=2, max_length=1000)
    image_size: int = Field(default=28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    image_column: str = "image"
    patient_id: str = "patient_id"
    label: str = "label"
    test_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    val_fraction: float = Field(default=0.0, ge=0, lt=0.9)
    split_column: str | None = Field(default=None, min_length=1)
    augment: AugmentSpec | None = AugmentSpec()
    metadata: list[str] = []
    hospitals: list[HospitalSpec] = Field(min_length=1)

    dp_defaults: ClassVar[dict[str, dict[str, Any]]] = DP_IMAGE_DEFAULTS
    subgroup_source: ClassVar[str] = "data.metadata column"

    @model_validator(mode="after")
    def _consistent(self) -> ImageDataSpec:
        dup = {c for c in self.classes if self.classes.count(c) > 1}
        if dup:
            raise ValueError(f"class listed twice: {sorted(dup)[0]}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then the federation computes them)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel")
        if self.split_column is None and self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError(f"test_fraction + val_fraction must be below 0.9 (some patients must train), "
                             f"got {self.test_fraction:g} + {self.val_fraction:g}")
        columns = [self.image_column, self.patient_id, self.label]
        if len(set(columns)) != 3:
            raise ValueError("image_column, patient_id and label must be different columns")
        named = [*columns, *self.metadata, *([self.split_column] if self.split_column else [])]
        seen = {c for c in named if named.count(c) > 1}
        if seen:
            raise ValueError(f"column declared twice: {sorted(seen)[0]}")
        unique_hospitals(self.hospitals)
        return self

    @property
    def contract(self) -> ImageContract:
        """The training layer's view of the images."""
        from training.imaging.data import ImageContract

        return ImageContract(
            classes=tuple(self.classes), size=self.image_size, channels=self.channels,
            image_column=self.image_column, patient_id=self.patient_id, label=self.label,
            metadata=tuple(self.metadata), split_column=self.split_column,
        )

    def class_names(self) -> list[str]:
        """The classes, in the order of the model's outputs."""
        return list(self.classes)

    def subgroup_candidates(self) -> list[str]:
        """The declared ``metadata`` columns."""
        return list(self.metadata)

    def may_have_val_part(self) -> bool:
        """Always: a ``.npz`` file's ``val_*`` arrays are a val part the spec cannot see."""
        return True


class ImageModelSpec(ModelSection):
    """The ``model:`` section for images: a small CNN or a ResNet-18 (GroupNorm, no BatchNorm).

    Attributes:
        width: Channels of the first stage (None: the network's default).
    """

    kind: str = Field(default="cnn", min_length=1, max_length=64)
    width: int | None = Field(default=None, ge=4, le=256, description="cnn/resnet18: channels of the first stage")

    kinds: ClassVar[tuple[str, ...]] = ("cnn", "resnet18")
    grad_sample_modes: ClassVar[tuple[str, ...]] = ("hooks", "ghost", "functorch")

    @classmethod
    def kind_problem(cls, kind: str, modality: str) -> str:
        """A tabular model on images."""
        if kind in ("logistic", "mlp"):
            return f"{kind} is for tabular data; images take cnn or resnet18"
        return super().kind_problem(kind, modality)

    @classmethod
    def grad_sample_mode_problem(cls, mode: str, modality: str) -> str:
        """Fused DP-SGD on a convolutional network."""
        if mode == "fused":
            return f"fused is for Linear-only models; {modality} take hooks, ghost or functorch"
        return super().grad_sample_mode_problem(mode, modality)

    def hparams(self) -> dict[str, Any]:
        """The first stage's channels, where set."""
        return {"width": self.width} if self.width is not None else {}
