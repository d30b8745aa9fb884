"""Hospital images: the image contract and checked loading of a folder or .npz into train/val/test parts."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image

from training.errors import ImageDataError, ImageDecodeError
from training.imaging.decode import decode_image, fit_pixels
from training.imaging.splits import ImageSplit, column_split, name_some, patient_split, split_values

__all__ = ["ImageContract", "image_fingerprint", "load_image_split"]

_NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
_MAX_NAMED = 5
_CHUNK = 64
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ImageContract:
    """What an imaging experiment expects of every hospital's images.

    Attributes:
        classes: Class names; a label is a name or an index into this tuple.
        size: Images are resized to ``size`` x ``size`` pixels.
        channels: 1 (grayscale) or 3 (RGB).
        image_column: Column of ``labels.csv`` holding the image file, relative to the CSV.
        patient_id: Column holding the patient identifier (several images per patient).
        label: Column holding the class.
        metadata: Further ``labels.csv`` columns carried with each image (e.g. ``sex``,
            ``age``) for the validation report's subgroups; an empty cell is missing.
        split_column: Column of ``labels.csv`` naming each image's part (``train``, ``val``
            or ``test``), required in every ``labels.csv`` when set; None: split by patient
            at random.
    """

    classes: tuple[str, ...]
    size: int
    channels: int
    image_column: str = "image"
    patient_id: str = "patient_id"
    label: str = "label"
    metadata: tuple[str, ...] = ()
    split_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be at least two distinct names, got {list(self.classes)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 1 <= self.size <= 4096:
            raise ValueError(f"size must be between 1 and 4096 pixels, got {self.size}")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def _in_threads(work: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``work`` over chunks of ``items`` in a thread pool (Pillow decodes without the GIL), in order."""
    chunks = [list(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return [item for part in pool.map(work, chunks) for item in part]


def _decode_chunk(chunk: list[tuple[str, str]], size: int, channels: int) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for name, path in chunk:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            out.append(decode_image(data, size=size, channels=channels, name=name))
        except ImageDecodeError as err:
            out.append(f"{name} ({err.problem})")
        except OSError as err:
            out.append(f"{name} (unreadable: {err.strerror or type(err).__name__})")
    return out


def _decode_files(csv_path: Path, files: list[tuple[str, str]], contract: ImageContract) -> np.ndarray:
    """Decode many image files in a thread pool; one error names every bad file (up to 5)."""
    results = _in_threads(functools.partial(_decode_chunk, size=contract.size, channels=contract.channels), files)
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise ImageDataError(csv_path, f"{len(bad)} image(s) cannot be read: {name_some(bad)}",
                             column=contract.image_column)
    return np.stack(results) if results else np.zeros((0, contract.channels, contract.size, contract.size), np.uint8)


def _label_index(raw: str, classes: tuple[str, ...]) -> int | None:
    if raw in classes:
        return classes.index(raw)
    if raw.lstrip("-").isdigit() and 0 <= int(raw) < len(classes):
        return int(raw)
    return None


def _leaves(root: str, image: str, key: str, real_dirs: dict[str, str]) -> bool:
    """Whether ``image`` (normalised: ``key``) points outside ``root``: absolute, ``..`` or a symlink out."""
    if os.path.isabs(image) or key == os.pardir or key.startswith(os.pardir + os.sep):
        return True
    full = os.path.join(root, key)
    folder = os.path.dirname(full)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    real = os.path.realpath(full) if os.path.islink(full) else os.path.join(real_dirs[folder], os.path.basename(full))
    return os.path.commonpath([root, real]) != root


def _read_labels(csv_path: Path, contract: ImageContract) -> pd.DataFrame:
    """The labels CSV, checked: columns, blanks, labels, escaping paths, conflicting duplicates."""
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise ImageDataError(csv_path, "file is empty") from err
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise ImageDataError(csv_path, f"unreadable: {type(err).__name__}: {err}") from err
    columns = (contract.image_column, contract.patient_id, contract.label)
    split = contract.split_column
    missing = [c for c in (*columns, *contract.metadata, *([split] if split else [])) if c not in frame.columns]
    if missing:
        raise ImageDataError(csv_path, f"missing required column(s) {', '.join(map(repr, missing))}")
    metadata = frame.loc[:, list(contract.metadata)].apply(lambda col: col.str.strip())
    parts = frame[split].str.strip() if split else None
    frame = frame.loc[:, list(columns)].apply(lambda col: col.str.strip())
    frame.columns = ["image", "patient", "label"]
    for column in contract.metadata:
        frame[f"meta:{column}"] = metadata[column].to_numpy()
    if frame.empty:
        raise ImageDataError(csv_path, "file has no rows")
    for column, name in zip(("image", "patient", "label"), columns, strict=True):
        blank = frame[column] == ""
        if blank.any():
            raise ImageDataError(csv_path, "empty cell", column=name, row=int(np.flatnonzero(blank)[0]) + 1)
    if parts is not None:
        frame["part"] = split_values(csv_path, parts, split or "")

    frame["key"] = [os.path.normpath(v) for v in frame["image"]]
    root, real_dirs = str(csv_path.parent.resolve()), dict[str, str]()
    escaping = [img for img, key in zip(frame["image"], frame["key"]) if _leaves(root, img, key, real_dirs)]
    if escaping:
        raise ImageDataError(csv_path, f"{len(escaping)} image path(s) leave the folder: {name_some(escaping)}",
                             column=contract.image_column)

    index = [_label_index(v, contract.classes) for v in frame["label"]]
    bad = [f"{img} (label {lab!r})" for img, lab, i in zip(frame["image"], frame["label"], index) if i is None]
    if bad:
        raise ImageDataError(csv_path, f"{len(bad)} mislabelled image(s), labels must be one of "
                             f"{list(contract.classes)}: {name_some(bad)}", column=contract.label)
    frame["label"] = np.asarray(index, dtype=np.int64)
    groups = frame.groupby("key", sort=False)
    for column, what in (("label", "different labels"), ("patient", "different patients")):
        conflicting = [k for k, n in groups[column].nunique().items() if n > 1]
        if conflicting:
            raise ImageDataError(csv_path, f"{len(conflicting)} image(s) listed twice with {what}: "
                                 f"{name_some(conflicting)}", column=contract.image_column)
    return frame.drop_duplicates("key").reset_index(drop=True)


def _load_folder(csv_path: Path, contract: ImageContract, test_fraction: float, val_fraction: float,
                 seed: int, unsplit: bool = False) -> ImageSplit:
    frame = _read_labels(csv_path, contract)
    files = [os.path.join(csv_path.parent, key) for key in frame["key"]]
    absent = [img for img, file in zip(frame["image"], files) if not os.path.isfile(file)]
    if absent:
        raise ImageDataError(csv_path, f"{len(absent)} image file(s) not found: {name_some(absent)}",
                             column=contract.image_column)
    by_column = "part" in frame.columns
    if unsplit:
        part = np.full(len(frame), "test")
    elif by_column:
        part = column_split(frame, csv_path, contract.split_column or "")
    else:
        part = patient_split(frame, csv_path, test_fraction, val_fraction, seed)
    images = _decode_files(csv_path, list(zip(frame["image"], files)), contract)
    labels, patients = frame["label"].to_numpy(np.int64), frame["patient"].to_numpy(str)

    def metadata(rows: np.ndarray) -> dict[str, tuple[str | None, ...]] | None:
        if not contract.metadata:
            return None
        return {c: tuple(v or None for v in frame[f"meta:{c}"].to_numpy(str)[rows].tolist()) for c in contract.metadata}

    train, val, test = (part == "train"), (part == "val"), (part == "test")
    return ImageSplit(images[train], labels[train], images[test], labels[test],
                      tuple(patients[train].tolist()), tuple(patients[test].tolist()),
                      metadata(test), metadata(train),
                      val_images=images[val], val_labels=labels[val], val_patients=tuple(patients[val].tolist()),
                      val_metadata=metadata(val),
                      source="unsplit" if unsplit else "column" if by_column else "fraction")


def _npz_images(path: Path, key: str, array: np.ndarray, contract: ImageContract) -> np.ndarray:
    """MedMNIST (N, H, W) or (N, H, W, C) uint8/uint16 images -> uint8 (N, C, size, size)."""
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        pass
    elif array.ndim != 3:
        raise ImageDataError(path, f"'{key}' must have shape (N, H, W) or (N, H, W, C), got {array.shape}")
    if array.dtype == np.uint16:
        array = np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageDataError(path, f"'{key}' must hold uint8 (or uint16) pixels, got {array.dtype}")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape[1:3] == (contract.size, contract.size):
        if array.ndim == 3 and contract.channels == 1:
            return np.ascontiguousarray(array[:, None])
        if array.ndim == 4 and array.shape[-1] == 3 and contract.channels == 3:
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    def fit(chunk: list[np.ndarray]) -> list[np.ndarray]:
        return [fit_pixels(Image.fromarray(a), contract.size, contract.channels) for a in chunk]

    out = _in_threads(fit, list(array))
    return np.stack(out) if out else np.zeros((0, contract.channels, contract.size, contract.size), np.uint8)


def _npz_labels(path: Path, key: str, array: np.ndarray, n: int, contract: ImageContract) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] > 1:
        raise ImageDataError(path, f"'{key}' has shape {array.shape}: multi-label data is not supported; "
                             "give one class index per image")
    flat = array.reshape(-1) if array.ndim in (1, 2) else array
    if flat.ndim != 1 or len(flat) != n:
        raise ImageDataError(path, f"'{key}' must hold one label per image ({n}), got shape {array.shape}")
    if flat.dtype.kind == "f" and np.all(np.isfinite(flat)) and np.all(flat == np.round(flat)):
        flat = flat.astype(np.int64)
    if flat.dtype.kind not in "iu":
        raise ImageDataError(path, f"'{key}' must hold integer class indices, got {flat.dtype}")
    flat = flat.astype(np.int64)
    bad = np.flatnonzero((flat < 0) | (flat >= contract.num_classes))
    if bad.size:
        shown = [f"index {i} (label {flat[i]})" for i in bad[:_MAX_NAMED]]
        more = f" and {bad.size - _MAX_NAMED} more" if bad.size > _MAX_NAMED else ""
        raise ImageDataError(path, f"'{key}': {bad.size} mislabelled image(s), labels must be class indices "
                             f"0..{contract.num_classes - 1}: {', '.join(shown)}{more}")
    return flat


def _load_npz(path: Path, contract: ImageContract) -> ImageSplit:
    if contract.metadata:
        raise ImageDataError(path, f"a .npz holds no per-image metadata ({', '.join(contract.metadata)}); "
                                   "use a folder with labels.csv, or declare no metadata")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise ImageDataError(path, f"not in the MedMNIST layout, missing {', '.join(missing)}")
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ImageDataError(path, f"unreadable .npz: {' '.join(str(err).split()) or type(err).__name__}") from err
    parts = {}
    for part in ("train", "val", "test"):
        images = _npz_images(path, f"{part}_images", arrays[f"{part}_images"], contract)
        labels = _npz_labels(path, f"{part}_labels", arrays[f"{part}_labels"], len(images), contract)
        parts[part] = (images, labels)
    if len(parts["train"][0]) == 0 or len(parts["test"][0]) == 0:
        empty = "train_images" if len(parts["train"][0]) == 0 else "test_images"
        raise ImageDataError(path, f"no images in {empty}; both the training and the test part need images")
    return ImageSplit(parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], None, None,
                      val_images=parts["val"][0], val_labels=parts["val"][1], source="npz")


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, stamp: tuple[int, ...], contract: ImageContract, test_fraction: float,
                 seed: int, val_fraction: float, unsplit: bool) -> ImageSplit:
    source = Path(path)
    if source.suffix.lower() == ".npz":
        return _load_npz(source, contract)
    return _load_folder(source, contract, test_fraction, val_fraction, seed, unsplit)


def load_image_split(path: Path | str, contract: ImageContract, test_fraction: float = 0.2,
                     seed: int = 0, *, val_fraction: float = 0.0, unsplit: bool = False) -> ImageSplit:
    """Load a hospital's images (checked against the contract) and split them in three parts.

    Where the split comes from (``ImageSplit.source``): a ``.npz``'s ``train_*``, ``val_*``
    and ``test_*`` arrays; else the ``labels.csv`` column ``contract.split_column`` when
    the contract names one (``train``/``val``/``test``, case-insensitive, ``training``
    means train, ``validation`` and ``valid`` val; no patient in two parts); else whole
    patients at random.

    Args:
        path: A folder holding ``labels.csv``, that CSV itself (image paths are relative to
            its folder), or a ``.npz`` in the MedMNIST layout.
        contract: Classes, size and channels the experiment expects.
        test_fraction: Share of patients held out for testing (random split only),
            stratified by class where every class has enough patients; deterministic in ``seed``.
        seed: Seed of the split.
        val_fraction: Share of patients set apart for validation (random split only; taken
            from the training patients, the test part does not change).
        unsplit: Folders only: no split, every image in the test part (a validator's own
            images, scored whole; the split column is not read).

    Returns:
        The split; cached per process by path and modification time, so the arrays are
        shared between callers and must not be modified in place.

    Raises:
        ImageDataError: naming the file(s) at fault (at most five, then how many more).
        ValueError: If ``test_fraction`` is not strictly between 0 and 1, or
            ``val_fraction`` not in [0, 1 - test_fraction).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 - test_fraction:
        raise ValueError(f"val_fraction must be at least 0 and below 1 - test_fraction, got {val_fraction}")
    source = Path(path).resolve()
    if not source.exists():
        raise ImageDataError(source, "no such folder or file")
    if source.is_dir():
        source = source / "labels.csv"
        if not source.is_file():
            raise ImageDataError(source.parent, "no labels.csv in the folder")
    elif source.suffix.lower() not in (".csv", ".npz"):
        raise ImageDataError(source, "unsupported; give a folder with labels.csv, a labels CSV or a MedMNIST .npz")
    elif not source.is_file():
        raise ImageDataError(source, "file not found")
    stamp = (source.stat().st_mtime_ns, source.parent.stat().st_mtime_ns)
    if unsplit and contract.split_column is not None:
        contract = dataclasses.replace(contract, split_column=None)
    return _load_cached(str(source), stamp, contract, float(test_fraction), seed, float(val_fraction), unsplit)


def image_fingerprint(contract: ImageContract) -> str:
    """A short, stable fingerprint of an image schema: size, channels and classes (in order)."""
    description = {"size": contract.size, "channels": contract.channels, "classes": list(contract.classes)}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
