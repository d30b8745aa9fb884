"""The spec's ``model:`` section as every modality shapes it: the model kind and what the spec asks of it."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from training.data_section import StrictSection

__all__ = ["ModelSection", "one_of"]


def one_of(values: tuple[str, ...] | list[str]) -> str:
    """``'a', 'b' or 'c'``: the choices as pydantic's literal errors list them."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


class ModelSection(StrictSection):
    """The fields every modality's model section has, and what the experiment spec asks of it.

    Each modality's subclass declares ``kind`` with its default model and its
    hyperparameter fields (tabular: ``hidden``, ``dropout``; images: ``width``).

    Attributes:
        kinds: The ``model.kind`` values this kind of data takes.
        grad_sample_modes: The ``privacy.grad_sample_mode`` values its models take; the
            first is the default.

    The spec validates the section with a context naming the modality (``modality``) and
    every registered modality's kinds (``model_kinds``), so a kind of another modality gets
    :meth:`kind_problem`'s message and an unknown kind the list of all registered kinds.
    """

    kind: str = Field(min_length=1, max_length=64)

    kinds: ClassVar[tuple[str, ...]] = ()
    grad_sample_modes: ClassVar[tuple[str, ...]] = ("hooks", "ghost", "functorch")

    @field_validator("kind")
    @classmethod
    def _a_kind_of_this_data(cls, kind: str, info: ValidationInfo) -> str:
        if kind in cls.kinds:
            return kind
        context = info.context or {}
        known = context.get("model_kinds") or cls.kinds
        if kind not in known:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": one_of(known)})
        raise ValueError(cls.kind_problem(kind, context.get("modality", "this")))

    @classmethod
    def kind_problem(cls, kind: str, modality: str) -> str:
        """Why ``kind`` (another modality's model) does not fit this data (after ``model.kind: ``)."""
        return f"{kind} is not a model for {modality} data; use {' or '.join(cls.kinds)}"

    @classmethod
    def grad_sample_mode_problem(cls, mode: str, modality: str) -> str:
        """Why ``privacy.grad_sample_mode`` ``mode`` (another modality's) does not fit these models."""
        return f"{mode} does not fit {modality} models; they take {', '.join(cls.grad_sample_modes)}"

    def hparams(self) -> dict[str, Any]:
        """The section's hyperparameters as the modality's model builder takes them (keyword arguments)."""
        return {}
