"""Deterministic synthetic imaging hospitals: learnable lesion classes with per-site shifts."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.atomic_write import atomic_write
from training.errors import SynthOptionsError

__all__ = ["LAYOUTS", "PATTERNS", "ImageSiteProfile", "draw_patients", "render_images", "synthesize_image_hospitals"]

logger = logging.getLogger(__name__)

#: What class ``i`` looks like: ``PATTERNS[i]`` drawn on the textured background.
PATTERNS: tuple[str, ...] = ("none", "blob", "patch", "ring", "streak", "spots")
LAYOUTS: tuple[str, ...] = ("folder", "npz")
_MIN_IMAGES = 20
_MAX_IMAGES_PER_PATIENT = 4
_JPEG_SITE = 2  # in the folder layout this hospital writes JPEG, the others PNG
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ImageSiteProfile:
    """How one hospital's scanner and case mix shift its images."""

    brightness: float
    contrast: float
    noise: float
    blur: float  # Gaussian sigma as a fraction of the image size
    tint: tuple[float, float, float]
    prevalence: tuple[float, ...]


def _draw_profile(rng: np.random.Generator, n_classes: int) -> ImageSiteProfile:
    prevalence = 0.5 * rng.dirichlet(np.full(n_classes, 3.0)) + 0.5 / n_classes
    return ImageSiteProfile(
        brightness=float(rng.uniform(-0.08, 0.08)),
        contrast=float(rng.uniform(0.8, 1.2)),
        noise=float(rng.uniform(0.02, 0.06)),
        blur=float(rng.uniform(0.0, 0.03)),
        tint=tuple(float(t) for t in rng.uniform(0.9, 1.1, 3)),  # type: ignore[arg-type]
        prevalence=tuple(float(p) for p in prevalence / prevalence.sum()),
    )


def _smooth(fields: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of (N, H, W) fields in the frequency domain (periodic edges)."""
    if sigma_px <= 0:
        return fields
    h, w = fields.shape[-2:]
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(fields) * kernel, s=(h, w))


def _gauss(d2: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    return np.exp(-d2 / (2.0 * np.square(sigma)))


def _lesions(pattern: str, xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, H, W) intensity added by one class's pattern around per-image centres (n, 2)."""
    n = len(centre)
    dx, dy = xx[None] - centre[:, 0, None, None], yy[None] - centre[:, 1, None, None]
    r2 = dx**2 + dy**2
    amp = lambda lo, hi: rng.uniform(lo, hi, n)[:, None, None]  # noqa: E731
    if pattern == "none":
        return np.zeros_like(r2)
    if pattern == "blob":
        return amp(0.4, 0.6) * _gauss(r2, amp(0.045, 0.07))
    if pattern == "patch":
        return amp(0.24, 0.34) * _gauss(r2, amp(0.11, 0.16))
    if pattern == "ring":
        return amp(0.3, 0.45) * _gauss((np.sqrt(r2) - amp(0.1, 0.14)) ** 2, 0.022)
    if pattern == "streak":
        angle = rng.uniform(0, np.pi, n)[:, None, None]
        along, across = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        return amp(0.3, 0.45) * _gauss(across**2, 0.025) * _gauss(along**2, 0.14)
    spots = np.zeros_like(r2)
    for _ in range(4):
        offset = rng.uniform(-0.14, 0.14, (n, 2))
        ox, oy = offset[:, 0, None, None], offset[:, 1, None, None]
        spots += amp(0.3, 0.45) * _gauss((dx - ox) ** 2 + (dy - oy) ** 2, 0.03)
    return spots


def render_images(labels: np.ndarray, patients: np.ndarray, profile: ImageSiteProfile, *, size: int, channels: int,
                  patterns: tuple[str, ...], rng: np.random.Generator, lesion_strength: float = 1.0) -> np.ndarray:
    """Draw uint8 (N, channels, size, size) images for the given class indices.

    Images of one patient (same value in ``patients``) share anatomy, texture and lesion
    site, so a split that is not by patient leaks. ``lesion_strength`` scales every lesion's
    intensity (below 1: subtler lesions, a harder task).
    """
    n, axis = len(labels), (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(axis, axis)
    anatomy = 0.62 - 0.2 * (_gauss((xx - 0.3) ** 2 / 2.2 + (yy - 0.5) ** 2 / 5.0, 0.1)
                            + _gauss((xx - 0.7) ** 2 / 2.2 + (yy - 0.5) ** 2 / 5.0, 0.1))
    ids, patient_of = np.unique(patients, return_inverse=True)
    texture = _smooth(rng.normal(size=(len(ids), size, size)), 0.06 * size)
    texture /= texture.std(axis=(1, 2), keepdims=True) + 1e-9
    site = rng.uniform(0.3, 0.7, (len(ids), 2))[patient_of] + rng.normal(0, 0.02, (n, 2))
    x = anatomy[None] + 0.05 * texture[patient_of]
    for k, pattern in enumerate(patterns):
        mask = labels == k
        if mask.any():
            x[mask] += _lesions(pattern, xx, yy, site[mask], rng) * lesion_strength
    x = _smooth(x, profile.blur * size)
    x = (x - 0.5) * profile.contrast + 0.5 + profile.brightness + rng.normal(0, profile.noise, x.shape)
    x = x[:, None] * (np.asarray(profile.tint)[:, None, None] if channels == 3 else 1.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def draw_patients(n_images: int, prevalence: tuple[float, ...], rng: np.random.Generator, prefix: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per image: patient id and class (a patient has one class and 1-4 images)."""
    ids: list[str] = []
    labels: list[int] = []
    number = 0
    while len(ids) < n_images:
        count = min(int(rng.integers(1, _MAX_IMAGES_PER_PATIENT + 1)), n_images - len(ids))
        label = int(rng.choice(len(prevalence), p=np.asarray(prevalence)))
        number += 1
        patient = f"{prefix}-p{number:05d}"
        ids += [patient] * count
        labels += [label] * count
    return np.asarray(ids), np.asarray(labels, dtype=np.int64)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _save_image(path: Path, pixels: np.ndarray, fmt: str) -> None:
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    options: dict[str, Any] = {"quality": 92} if fmt == "JPEG" else {"optimize": False}
    atomic_write(path, lambda p: image.save(p, format=fmt, **options))


def patient_demographics(patient: str) -> tuple[str, int]:
    """A synthetic patient's sex and age, derived from the id alone (stable, and independent
    of the image stream, so adding them changed no image)."""
    h = int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16)
    return ("F" if h % 2 else "M"), 30 + (h >> 1) % 60


def _patient_parts(patients: np.ndarray, rng: np.random.Generator,
                   shares: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, str]:
    """Each patient's part, ``train``/``val``/``test``, by ``shares`` of the patients."""
    ids = rng.permutation(np.unique(patients))
    cut = np.rint(np.cumsum(shares[:2]) * len(ids)).astype(int)
    return {p: part for part, group in zip(("train", "val", "test"), np.split(ids, cut)) for p in group}


def _write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                  classes: tuple[str, ...], fmt: str, parts: tuple[str, dict[str, str]] | None = None) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    rows, seen = ["image,patient_id,label,sex,age" + (f",{parts[0]}" if parts else "")], dict[str, int]()
    for pixels, label, patient in zip(images, labels, patients, strict=True):
        seen[patient] = seen.get(patient, 0) + 1
        name = f"images/{patient}-{seen[patient]}{suffix}"
        _save_image(folder / name, pixels, fmt)
        sex, age = patient_demographics(str(patient))
        rows.append(f"{name},{patient},{classes[label]},{sex},{age}" + (f",{parts[1][patient]}" if parts else ""))
    text = "\n".join(rows) + "\n"
    atomic_write(folder / "labels.csv", lambda p: _write_text(p, text))  # last: marks it complete


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray, patients: np.ndarray,
               rng: np.random.Generator, shares: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> None:
    """MedMNIST layout, split by patient (70/10/20 by default), byte-identical for the same arrays."""
    part_of = _patient_parts(patients, rng, shares)
    hwc = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    arrays = {}
    for part in ("train", "val", "test"):
        mask = np.asarray([part_of[p] == part for p in patients], dtype=bool)
        arrays[f"{part}_images"] = np.ascontiguousarray(hwc[mask])
        arrays[f"{part}_labels"] = labels[mask].astype(np.uint8)[:, None]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, array, allow_pickle=False)

    atomic_write(path, write)


def _check(n_hospitals: int, images_per_hospital: int, size: int, channels: int, classes: tuple[str, ...],
           layout: str, majority: float | None = None, split_column: str | None = None) -> None:
    if n_hospitals < 1:
        raise SynthOptionsError(f"n_hospitals must be >= 1, got {n_hospitals}")
    if images_per_hospital < _MIN_IMAGES:
        raise SynthOptionsError(f"images_per_hospital must be >= {_MIN_IMAGES}, got {images_per_hospital}")
    if not 8 <= size <= 512:
        raise SynthOptionsError(f"size must be between 8 and 512 pixels, got {size}")
    if channels not in (1, 3):
        raise SynthOptionsError(f"channels must be 1 or 3, got {channels}")
    if not 2 <= len(classes) <= len(PATTERNS) or len(set(classes)) != len(classes) or not all(classes):
        raise SynthOptionsError(f"classes must be 2 to {len(PATTERNS)} distinct, non-empty names, got {list(classes)}")
    if any("," in c or '"' in c for c in classes):
        raise SynthOptionsError(f"class names cannot hold commas or quotes, got {list(classes)}")
    if layout not in LAYOUTS:
        raise SynthOptionsError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if majority is not None and not 1.0 / len(classes) <= majority < 1.0:
        raise SynthOptionsError(f"majority must be at least 1/{len(classes)} and below 1, got {majority}")
    if split_column is not None:
        if layout != "folder":
            raise SynthOptionsError("split_column is for the folder layout (a .npz holds its parts as train_/val_/test_ arrays)")
        if split_column in ("image", "patient_id", "label", "sex", "age") or not split_column or "," in split_column:
            raise SynthOptionsError(f"split_column must be a new column name, got {split_column!r}")


def synthesize_image_hospitals(
    out_dir: Path | str,
    *,
    n_hospitals: int = 3,
    images_per_hospital: int = 240,
    size: int = 28,
    channels: int = 1,
    classes: tuple[str, ...] = ("normal", "nodule", "opacity"),
    layout: str = "folder",
    seed: int = 0,
    majority: float | None = None,
    split_column: str | None = None,
    lesion_strength: float = 1.0,
    parts: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> list[Path]:
    """Write one synthetic imaging hospital per site plus ``ground_truth.json``.

    Class ``i`` shows ``PATTERNS[i]`` (none, a bright round blob, a diffuse patch, ...) on
    a textured chest-like background. Sites differ in brightness, contrast, noise, blur,
    tint (RGB) and class prevalence; patients have 1-4 images sharing anatomy and lesion site.

    Args:
        out_dir: Output directory, created if missing.
        n_hospitals: Number of hospitals (>= 1).
        images_per_hospital: Images per hospital (>= 20).
        size: Image height and width in pixels (8-512).
        channels: 1 (grayscale) or 3 (RGB).
        classes: 2 to 6 class names; the first is the lesion-free class.
        layout: ``"folder"`` (``hospital-XX/labels.csv`` + ``images/``; hospital 2 writes
            JPEG, the others PNG) or ``"npz"`` (``hospital-XX.npz`` in the MedMNIST layout).
        seed: Seed; identical arguments give identical files.
        majority: The first class's share of every hospital's patients (e.g. 0.9 for 90/10
            imbalance), the rest shared evenly; None: a prevalence drawn per site.
        split_column: Folder layout: add this ``labels.csv`` column with each image's fixed
            part, ``train``/``val``/``test`` (70/10/20 of the patients, as the ``.npz`` parts).
        parts: Shares of patients in train, val and test (``.npz`` parts or the split column).
        lesion_strength: Scales the lesions' intensity (0 < s <= 1; below 1 a harder task:
            0.1 puts a blob at about the texture's contrast).

    Returns:
        Per hospital, its folder (holding ``labels.csv``) or its ``.npz`` file.

    Raises:
        SynthOptionsError: If an argument is out of range (also a ValueError).
    """
    classes = tuple(str(c).strip() for c in classes)
    _check(n_hospitals, images_per_hospital, size, channels, classes, layout, majority, split_column)
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or parts[2] <= 0 or abs(sum(parts) - 1.0) > 1e-9:
        raise SynthOptionsError(f"parts must be three shares (train > 0, val, test > 0) summing to 1, got {list(parts)}")
    if not 0.0 < lesion_strength <= 1.0:
        raise SynthOptionsError(f"lesion_strength must be in (0, 1], got {lesion_strength}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(n_hospitals)))
    written: list[Path] = []
    truth: dict[str, Any] = {}
    for index, child in enumerate(np.random.SeedSequence(seed).spawn(n_hospitals), start=1):
        rng = np.random.default_rng(child)
        hospital_id = f"hospital-{index:0{width}d}"
        profile = _draw_profile(rng, len(classes))
        if majority is not None:
            rest = (1.0 - majority) / (len(classes) - 1)
            profile = replace(profile, prevalence=(majority, *([rest] * (len(classes) - 1))))
        patients, labels = draw_patients(images_per_hospital, profile.prevalence, rng, f"h{index:0{width}d}")
        images = render_images(labels, patients, profile, size=size, channels=channels,
                               patterns=PATTERNS[: len(classes)], rng=rng, lesion_strength=lesion_strength)
        fmt = "JPEG" if index == _JPEG_SITE else "PNG"
        if layout == "folder":
            path = out / hospital_id
            column = None if split_column is None else (
                split_column, _patient_parts(patients, np.random.default_rng([seed, index, 11]), parts))
            _write_folder(path, images, labels, patients, classes, fmt, column)
        else:
            path = out / f"{hospital_id}.npz"
            _write_npz(path, images, labels, patients, rng, parts)
        written.append(path)
        counts = np.bincount(labels, minlength=len(classes))
        truth[hospital_id] = {"path": path.name, "images": images_per_hospital,
                              "patients": int(len(np.unique(patients))),
                              "format": fmt if layout == "folder" else "npz",
                              "class_counts": dict(zip(classes, map(int, counts))), "profile": asdict(profile)}
        logger.debug("wrote %s: %d images, classes %s", path, images_per_hospital, counts.tolist())
    summary = {"seed": seed, "size": size, "channels": channels, "layout": layout, "classes": list(classes),
               "patterns": dict(zip(classes, PATTERNS)), "hospitals": truth}
    summary.update({k: v for k, v in (("majority", majority), ("split_column", split_column)) if v is not None})
    if lesion_strength != 1.0:
        summary["lesion_strength"] = lesion_strength
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    atomic_write(out / "ground_truth.json", lambda p: _write_text(p, text))
    logger.info("synthesized %d imaging hospitals into %s", n_hospitals, out)
    return written
