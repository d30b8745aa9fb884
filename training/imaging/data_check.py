"""``bioverse data check`` for images: a hospital's split and its training class mix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.imaging.data import load_image_split
from training.imaging.preprocessing import class_counts
from training.imaging.splits import ImageSplit
from training.site_check import SiteCheck, SitesReview

__all__ = ["check_site", "image_split", "review_sites", "split_origin"]


def image_split(data: Any, path: Path | str, seed: int) -> ImageSplit:
    """A hospital's images split as a run splits them (``data``: the spec's images ``data`` section)."""
    return load_image_split(path, data.contract, data.test_fraction, seed, val_fraction=data.val_fraction)


def split_origin(split: ImageSplit, data: Any, seed: int) -> str:
    """Where a hospital's split came from, in words."""
    if split.source == "npz":
        return "the .npz's train/val/test arrays"
    if split.source == "column":
        return f"labels.csv column '{data.split_column}'"
    if split.source == "unsplit":
        return "no split (every image held out)"
    return (f"patients at random (test_fraction {data.test_fraction:g}, val_fraction {data.val_fraction:g}, "
            f"seed {seed})")


def check_site(spec: Any, hospital: Any) -> SiteCheck:
    """``data check`` of one hospital's images (``spec``: an ``ExperimentSpec``; the hospital has a path).

    Raises:
        ImageDataError: the images break the contract.
    """
    data = spec.data
    split = image_split(data, hospital.path, spec.seed)
    counts = class_counts(split.train_labels, len(data.classes))
    mix = ", ".join(f"{c} {k}" for c, k in zip(data.classes, counts, strict=True))
    parts = split.counts()
    line = (f"{hospital.id}: ok, {parts['train']} training, {parts['val']} val and {parts['test']} held-out "
            f"images ({mix} in training); split from {split_origin(split, data, spec.seed)}")
    return SiteCheck(hospital.id, [line])


def review_sites(spec: Any, checks: list[SiteCheck]) -> SitesReview:
    """Nothing to compare across image hospitals: their classes are declared in the spec."""
    return SitesReview()
