"""The three parts of a hospital's data (train, val, test) and the spellings a split column may use for them."""

from __future__ import annotations

__all__ = ["PARTS", "PART_NAMES"]

#: The parts, in order.
PARTS: tuple[str, ...] = ("train", "val", "test")

#: The values of a split column (after canonicalisation, case-insensitive) and the part each names.
PART_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
