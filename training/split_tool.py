"""N simulated hospitals written from one table, image folder or MedMNIST-style ``.npz`` (``bioverse data split``).

Whole patients go to one hospital (:mod:`training.split_plan`); an existing train/val/test split is
divided among the hospitals; images are hard-linked where possible, else copied. See docs/data.md.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from training.errors import DataSplitError
from training.split_parts import PARTS
from training.split_plan import (
    UNSAFE_ID_CHARS,
    SplitOptions,
    assign_units,
    column_values,
    label_mix,
    part_counts,
    plan_hospitals,
)

__all__ = ["HospitalWritten", "SplitResult", "spec_skeleton", "split_dataset"]

_TABLES = {".csv", ".parquet", ".pq"}


@dataclass(frozen=True)
class HospitalWritten:
    """One hospital written: where, how many rows or images, its class mix and parts."""

    hospital_id: str
    path: Path
    unit: str
    count: int
    patients: int
    classes: dict[str, int]
    parts: dict[str, int] | None

    def line(self) -> str:
        """One line for the terminal."""
        mix = ", ".join(f"{c}: {n}" for c, n in self.classes.items()) or "no label column"
        parts = f"; train {self.parts['train']} / val {self.parts['val']} / test {self.parts['test']}" if self.parts else ""
        return f"{self.hospital_id}: {self.count} {self.unit}, {self.patients} patients ({mix}){parts} -> {self.path}"


@dataclass(frozen=True)
class SplitResult:
    """What was written, and what a spec over it needs to know."""

    layout: str  # table, images or npz
    hospitals: list[HospitalWritten]
    label: str | None = None
    patient_id: str | None = None
    split_column: str | None = None
    classes: list[str] = field(default_factory=list)
    linked: int = 0
    copied: int = 0
    columns: list[str] = field(default_factory=list)


def _layout(source: Path) -> tuple[str, Path]:
    if source.is_dir():
        if not (source / "labels.csv").is_file():
            raise DataSplitError(source, "a folder must hold labels.csv (image file, patient id, label per row)")
        return "images", source / "labels.csv"
    if not source.is_file():
        raise DataSplitError(source, "no such file or folder")
    if source.name == "labels.csv":
        return "images", source
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return "npz", source
    if suffix in _TABLES:
        return "table", source
    raise DataSplitError(source, f"unknown layout {suffix or '(no suffix)'}: give a .csv, .parquet, .npz or a folder with labels.csv")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv" or path.name == "labels.csv":
            # as text, so that every cell is written back exactly as it was read
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise DataSplitError(path, "file is empty") from err
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise DataSplitError(path, f"unreadable: {type(err).__name__}: {' '.join(str(err).split())}") from err











def _default(frame: pd.DataFrame, given: str | None, fallback: str) -> str | None:
    return given if given is not None else (fallback if fallback in frame.columns else None)


def _targets(out: Path, names: list[str]) -> None:
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise DataSplitError(out, f"--out: {taken[0]} exists there; write into an empty folder")
    out.mkdir(parents=True, exist_ok=True)


def _link(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (True), or copy it where a link is impossible (False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def _split_table(source: Path, out: Path, options: SplitOptions) -> SplitResult:
    frame = _read_table(source)
    label, pid = options.label, _default(frame, options.patient_id, "patient_id")
    split = _default(frame, options.split_column, "split")
    ids, hospital_of, labels, parts = plan_hospitals(frame, source, options, label=label, patient_id=pid, split_column=split)
    suffix = ".parquet" if source.suffix.lower() in (".parquet", ".pq") else ".csv"
    _targets(out, [f"{h}{suffix}" for h in ids])
    written = []
    patients = frame[pid].to_numpy() if pid else np.arange(len(frame))
    for h, hid in enumerate(ids):
        mine = np.flatnonzero(hospital_of == h)
        path = out / f"{hid}{suffix}"
        part = frame.iloc[mine]
        part.to_parquet(path, index=False) if suffix == ".parquet" else part.to_csv(path, index=False)
        written.append(HospitalWritten(hid, path, "rows", len(mine), len(set(patients[mine].tolist())),
                                       label_mix([labels[i] for i in mine]) if label else {},
                                       part_counts([parts[i] for i in mine]) if parts else None))
    return SplitResult("table", written, label, pid, split, columns=[str(c) for c in frame.columns])


def _split_folder(csv_path: Path, out: Path, options: SplitOptions) -> SplitResult:
    frame = _read_table(csv_path)
    label = options.label or "label"
    pid, split = _default(frame, options.patient_id, "patient_id"), _default(frame, options.split_column, "split")
    files = column_values(frame, csv_path, options.image_column, "--image-column")
    root = csv_path.parent.resolve()
    sources = []
    for row, name in enumerate(files, start=1):
        src = (root / str(name)).resolve()
        if not src.is_relative_to(root):
            raise DataSplitError(csv_path, f"image path {name!r} leaves the folder", column=options.image_column, row=row)
        if not src.is_file():
            raise DataSplitError(csv_path, f"image {name!r} not found", column=options.image_column, row=row)
        sources.append(src)
    ids, hospital_of, labels, parts = plan_hospitals(frame, csv_path, options, label=label, patient_id=pid, split_column=split)
    _targets(out, ids)
    linked = copied = 0
    written = []
    patients = frame[pid].to_numpy() if pid else np.arange(len(frame))
    for h, hid in enumerate(ids):
        mine = np.flatnonzero(hospital_of == h)
        folder = out / hid
        folder.mkdir(parents=True)
        frame.iloc[mine].to_csv(folder / "labels.csv", index=False)
        for i in mine:
            dst = folder / sources[i].relative_to(root)
            if not dst.exists():  # an image listed twice is linked once
                if _link(sources[i], dst):
                    linked += 1
                else:
                    copied += 1
        written.append(HospitalWritten(hid, folder, "images", len(mine), len(set(patients[mine].tolist())),
                                       label_mix([labels[i] for i in mine]), part_counts([parts[i] for i in mine]) if parts else None))
    classes = sorted({v for v in labels if v is not None})
    return SplitResult("images", written, label, pid, split, classes, linked, copied)


def _split_npz(path: Path, out: Path, options: SplitOptions) -> SplitResult:
    if options.by not in ("random", "stratified"):
        raise DataSplitError(path, f"--by {options.by}: a .npz has no columns; use random or stratified")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise DataSplitError(path, f"unreadable .npz: {' '.join(str(err).split()) or type(err).__name__}") from err
    present = [p for p in PARTS if f"{p}_images" in arrays]
    if "train" not in present or "test" not in present:
        raise DataSplitError(path, "a .npz needs train_images/train_labels and test_images/test_labels (val_* optional)")
    for p in present:
        if f"{p}_labels" not in arrays or len(arrays[f"{p}_labels"]) != len(arrays[f"{p}_images"]):
            raise DataSplitError(path, f"{p}_labels missing or not one per image of {p}_images")
    n = options.hospitals
    if n is None or n < 1:
        raise DataSplitError(path, f"--hospitals: give how many hospitals to make (--by {options.by})")
    ids = [f"{options.prefix}-{h + 1:0{max(2, len(str(n)))}d}" for h in range(n)]
    _targets(out, [f"{h}.npz" for h in ids])
    rng = np.random.default_rng(options.seed)
    template = arrays["train_images"]
    chosen: dict[str, np.ndarray] = {}
    for p in PARTS:
        images = arrays.get(f"{p}_images", np.zeros((0, *template.shape[1:]), template.dtype))
        labels = arrays.get(f"{p}_labels", np.zeros((0, *arrays["train_labels"].shape[1:]), arrays["train_labels"].dtype))
        flat = [str(v) for v in labels.reshape(len(labels), -1)[:, 0]] if len(labels) else []
        if p != "val" and len(images) < n:
            raise DataSplitError(path, f"--hospitals: {n} hospitals but only {len(images)} {p} images")
        strata = flat if options.by == "stratified" else [""] * len(images)
        chosen[p] = assign_units(len(images), strata, n, rng)
        arrays[f"{p}_images"], arrays[f"{p}_labels"] = images, labels
    written = []
    for h, hid in enumerate(ids):
        payload, mix, counts = {}, [], {}
        for p in PARTS:
            mine = np.flatnonzero(chosen[p] == h)
            payload[f"{p}_images"], payload[f"{p}_labels"] = arrays[f"{p}_images"][mine], arrays[f"{p}_labels"][mine]
            counts[p] = len(mine)
            mix += [str(v) for v in payload[f"{p}_labels"].reshape(len(mine), -1)[:, 0]] if len(mine) else []
        target = out / f"{hid}.npz"
        np.savez_compressed(target, **payload)
        written.append(HospitalWritten(hid, target, "images", sum(counts.values()), sum(counts.values()), label_mix(mix), counts))
    values = np.concatenate([arrays[f"{p}_labels"].reshape(-1) for p in PARTS])
    if np.issubdtype(values.dtype, np.integer) and len(values) and values.min() >= 0:
        classes = [str(i) for i in range(int(values.max()) + 1)]  # labels index the classes: none skipped
    else:
        classes = sorted({str(v) for v in values})
    return SplitResult("npz", written, None, None, None, classes)


def split_dataset(source: Path | str, out: Path | str, options: SplitOptions) -> SplitResult:
    """Write ``options.hospitals`` hospitals made from ``source`` into ``out``.

    Raises:
        DataSplitError: the source is unreadable or unsuitable, or an option does not fit it
            (named, with the column and row where one is at fault).
    """
    source, out = Path(source), Path(out)
    layout, path = _layout(source)
    if layout == "table":
        return _split_table(path, out, options)
    if layout == "images":
        return _split_folder(path, out, options)
    return _split_npz(path, out, options)


def spec_skeleton(result: SplitResult, spec_path: Path | str, source: Path | str) -> str:
    """A spec listing the hospitals written (paths relative to the spec's folder), for the
    data scientist to complete (features and ranges, or class names)."""
    spec_dir = Path(spec_path).resolve().parent
    hospitals = [{"id": h.hospital_id, "path": os.path.relpath(h.path.resolve(), spec_dir)} for h in result.hospitals]
    data: dict[str, object] = {}
    if result.layout == "table":
        data.update(label=result.label or "FILL-IN", numeric=[], categorical=[])
    else:
        names = result.classes if result.layout == "images" else [f"class-{c}" for c in result.classes]
        data.update(modality="images", classes=names)
        if result.label and result.label != "label":
            data["label"] = result.label
    if result.patient_id:
        data["patient_id"] = result.patient_id
    if result.split_column:
        data["split_column"] = result.split_column
    data["hospitals"] = hospitals
    name = UNSAFE_ID_CHARS.sub("-", Path(source).stem).strip("-._") or "split"
    header = (f"# Written by `bioverse data split` from {source}: {len(hospitals)} hospitals.\n"
              "# Complete it: the feature columns and their ranges (tables) or the class names (images), "
              "then `bioverse experiment validate`.\n")
    taken = {result.label, result.patient_id, result.split_column}
    others = [c for c in result.columns if c not in taken]
    if others:
        header += f"# Columns to choose features from: {', '.join(others)}\n"
    return header + yaml.safe_dump({"name": f"{name}-split", "data": data}, sort_keys=False)
