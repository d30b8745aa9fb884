"""N simulated hospitals from one dataset: a CSV or Parquet table, an image folder
(``labels.csv`` + image files) or a MedMNIST-style ``.npz`` (``bioverse data split``).

Whole patients go to one hospital (a table's or ``labels.csv``'s patient id column; a
``.npz`` has none, so each image is its own patient). ``by``: ``random`` (shuffled,
equal shares), ``stratified`` (equal shares of every class) or a column (each distinct
value is one hospital, e.g. a real centre column). An existing split is kept: a split
column (train/val/test, spelled as the data contract accepts) or the ``.npz`` parts are
each divided among the hospitals, so every hospital keeps its own train, val and test
parts. Images in folders are hard-linked into the hospitals' folders, copied where a
link is impossible (another file system).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from training.categories import canonical
from training.tabular.contract import SPLIT_PARTS
from training.errors import DataSplitError

__all__ = ["HospitalWritten", "SplitOptions", "SplitResult", "spec_skeleton", "split_dataset"]

_PARTS = ("train", "val", "test")
_TABLES = {".csv", ".parquet", ".pq"}
_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SplitOptions:
    """How to split.

    Attributes:
        hospitals: How many hospitals (``random``/``stratified``); with a column, None or
            the number of its distinct values.
        by: ``random``, ``stratified`` or the name of a column.
        seed: Same seed, same hospitals.
        label: The label column (tables: stratification and class mix; ``labels.csv``:
            default ``label``).
        patient_id: The patient id column; None: ``patient_id`` if the data has it, else
            every row is its own patient.
        split_column: The column naming each row's part; None: ``split`` if present.
        image_column: The ``labels.csv`` column naming each image file.
        prefix: Hospital ids are ``<prefix>-01``, ``<prefix>-02``, ... (random, stratified).
    """

    hospitals: int | None = None
    by: str = "random"
    seed: int = 0
    label: str | None = None
    patient_id: str | None = None
    split_column: str | None = None
    image_column: str = "image"
    prefix: str = "hospital"


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


def _fail(source: Path, problem: str, *, column: str | None = None, row: int | None = None) -> DataSplitError:
    return DataSplitError(source, problem, column=column, row=row)


def _layout(source: Path) -> tuple[str, Path]:
    if source.is_dir():
        if not (source / "labels.csv").is_file():
            raise _fail(source, "a folder must hold labels.csv (image file, patient id, label per row)")
        return "images", source / "labels.csv"
    if not source.is_file():
        raise _fail(source, "no such file or folder")
    if source.name == "labels.csv":
        return "images", source
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return "npz", source
    if suffix in _TABLES:
        return "table", source
    raise _fail(source, f"unknown layout {suffix or '(no suffix)'}: give a .csv, .parquet, .npz or a folder with labels.csv")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv" or path.name == "labels.csv":
            # as text, so that every cell is written back exactly as it was read
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise _fail(path, "file is empty") from err
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise _fail(path, f"unreadable: {type(err).__name__}: {' '.join(str(err).split())}") from err


def _text(value: object) -> str | None:
    """A cell as canonical text (``4.0`` and ``4`` alike); None when blank or missing."""
    value = canonical(value)
    return None if value is None else str(value)


def _column(frame: pd.DataFrame, path: Path, name: str, option: str, *, blank_ok: bool = False) -> list[str | None]:
    if name not in frame.columns:
        raise _fail(path, f"{option}: no column {name!r} (columns: {', '.join(map(str, frame.columns[:12]))})")
    values = [_text(v) for v in frame[name].tolist()]
    if not blank_ok and None in values:
        raise _fail(path, "empty cell", column=name, row=values.index(None) + 1)
    return values


def _parts(frame: pd.DataFrame, path: Path, column: str) -> list[str]:
    values = _column(frame, path, column, "--split-column")
    parts = [SPLIT_PARTS.get(v.casefold()) for v in values if v is not None]
    if None in parts:
        row = parts.index(None)
        raise _fail(path, f"split value {values[row]!r} is not train, val or test", column=column, row=row + 1)
    return parts  # type: ignore[return-value]


def _assign(units: int, strata: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Hospital index of each unit: shuffled, then dealt in turn within each stratum, the
    turn carried over between strata, so hospitals differ by at most one unit per stratum."""
    order = rng.permutation(units)
    keys = np.asarray(strata, dtype=object)[order]
    order = order[np.argsort(keys, kind="stable")]  # shuffled within each stratum
    out = np.empty(units, dtype=np.int64)
    out[order] = np.arange(units) % n
    return out


def _hospital_ids(values: Sequence[str], path: Path, column: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for value in sorted(set(values)):
        hid = _ID.sub("-", value).strip("-._")[:100] or "blank"
        if not hid[0].isalnum():
            hid = f"h{hid}"
        if hid in ids.values():
            raise _fail(path, f"values {value!r} and {next(k for k, v in ids.items() if v == hid)!r} both make "
                              f"hospital id {hid!r}", column=column)
        ids[value] = hid
    return ids


def _check_parts(ids: list[str], part_of: np.ndarray, hospital_of: np.ndarray, source: Path) -> None:
    for h, hid in enumerate(ids):
        mine = part_of[hospital_of == h]
        for part in ("train", "test"):
            if not (mine == part).any():
                total = int((part_of == part).sum())
                raise _fail(source, f"{hid} would get no {part} rows ({total} {part} row(s) in all): use fewer hospitals")


def _plan(frame: pd.DataFrame, path: Path, options: SplitOptions, *, label: str | None, patient_id: str | None,
          split_column: str | None) -> tuple[list[str], np.ndarray, list[str | None], list[str] | None]:
    """Hospital ids and each row's hospital index; each row's label text and part."""
    rows = len(frame)
    if rows == 0:
        raise _fail(path, "no rows")
    labels = _column(frame, path, label, "--label", blank_ok=options.by != "stratified") if label else [None] * rows
    parts = _parts(frame, path, split_column) if split_column else None
    patients = _column(frame, path, patient_id, "--patient-id") if patient_id else [str(i) for i in range(rows)]
    unit_index = pd.factorize(pd.Series(patients, dtype=object))[0]
    units = int(unit_index.max()) + 1
    first = pd.Series(np.arange(rows)).groupby(unit_index).first().to_numpy()  # each patient's first row
    if options.by in ("random", "stratified"):
        n = options.hospitals
        if n is None or n < 1:
            raise _fail(path, f"--hospitals: give how many hospitals to make (--by {options.by})")
        if n > units:
            raise _fail(path, f"--hospitals: {n} hospitals but only {units} patients")
        if options.by == "stratified" and label is None:
            raise _fail(path, "--label: name the label column to stratify by")
        strata = [(parts[r] if parts else "") + "|" + (str(labels[r]) if options.by == "stratified" else "") for r in first]
        rng = np.random.default_rng(options.seed)
        ids = [f"{options.prefix}-{h + 1:0{max(2, len(str(n)))}d}" for h in range(n)]
        hospital_of = _assign(units, strata, n, rng)[unit_index]
    else:
        centre = _column(frame, path, options.by, "--by")
        pairs = pd.DataFrame({"patient": unit_index, "centre": centre}).drop_duplicates()
        straddling = pairs[pairs["patient"].duplicated()]
        if len(straddling):
            who = patients[int(np.flatnonzero(unit_index == straddling["patient"].iloc[0])[0])]
            raise _fail(path, f"patient {who!r} appears under two values of {options.by!r}; a patient stays in one hospital",
                        column=options.by)
        names = _hospital_ids([c for c in centre if c is not None], path, options.by)
        if options.hospitals is not None and options.hospitals != len(names):
            raise _fail(path, f"--hospitals: {options.hospitals} given but column {options.by!r} has {len(names)} values")
        ids = list(names.values())
        index = {v: i for i, v in enumerate(names)}
        hospital_of = np.asarray([index[c] for c in centre], dtype=np.int64)  # type: ignore[index]
    if parts is not None:
        _check_parts(ids, np.asarray(parts, dtype=object), hospital_of, path)
    return ids, hospital_of, labels, parts


def _mix(labels: Sequence[str | None]) -> dict[str, int]:
    counts = pd.Series([("missing" if v is None else v) for v in labels], dtype=object).value_counts()
    return {str(k): int(counts[k]) for k in sorted(counts.index, key=str)}


def _part_counts(parts: Sequence[str] | None) -> dict[str, int] | None:
    return None if parts is None else {p: sum(1 for v in parts if v == p) for p in _PARTS}


def _default(frame: pd.DataFrame, given: str | None, fallback: str) -> str | None:
    return given if given is not None else (fallback if fallback in frame.columns else None)


def _targets(out: Path, names: list[str]) -> None:
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise _fail(out, f"--out: {taken[0]} exists there; write into an empty folder")
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
    ids, hospital_of, labels, parts = _plan(frame, source, options, label=label, patient_id=pid, split_column=split)
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
                                       _mix([labels[i] for i in mine]) if label else {},
                                       _part_counts([parts[i] for i in mine]) if parts else None))
    return SplitResult("table", written, label, pid, split, columns=[str(c) for c in frame.columns])


def _split_folder(csv_path: Path, out: Path, options: SplitOptions) -> SplitResult:
    frame = _read_table(csv_path)
    label = options.label or "label"
    pid, split = _default(frame, options.patient_id, "patient_id"), _default(frame, options.split_column, "split")
    files = _column(frame, csv_path, options.image_column, "--image-column")
    root = csv_path.parent.resolve()
    sources = []
    for row, name in enumerate(files, start=1):
        src = (root / str(name)).resolve()
        if not src.is_relative_to(root):
            raise _fail(csv_path, f"image path {name!r} leaves the folder", column=options.image_column, row=row)
        if not src.is_file():
            raise _fail(csv_path, f"image {name!r} not found", column=options.image_column, row=row)
        sources.append(src)
    ids, hospital_of, labels, parts = _plan(frame, csv_path, options, label=label, patient_id=pid, split_column=split)
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
                                       _mix([labels[i] for i in mine]), _part_counts([parts[i] for i in mine]) if parts else None))
    classes = sorted({v for v in labels if v is not None})
    return SplitResult("images", written, label, pid, split, classes, linked, copied)


def _split_npz(path: Path, out: Path, options: SplitOptions) -> SplitResult:
    if options.by not in ("random", "stratified"):
        raise _fail(path, f"--by {options.by}: a .npz has no columns; use random or stratified")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise _fail(path, f"unreadable .npz: {' '.join(str(err).split()) or type(err).__name__}") from err
    present = [p for p in _PARTS if f"{p}_images" in arrays]
    if "train" not in present or "test" not in present:
        raise _fail(path, "a .npz needs train_images/train_labels and test_images/test_labels (val_* optional)")
    for p in present:
        if f"{p}_labels" not in arrays or len(arrays[f"{p}_labels"]) != len(arrays[f"{p}_images"]):
            raise _fail(path, f"{p}_labels missing or not one per image of {p}_images")
    n = options.hospitals
    if n is None or n < 1:
        raise _fail(path, f"--hospitals: give how many hospitals to make (--by {options.by})")
    ids = [f"{options.prefix}-{h + 1:0{max(2, len(str(n)))}d}" for h in range(n)]
    _targets(out, [f"{h}.npz" for h in ids])
    rng = np.random.default_rng(options.seed)
    template = arrays["train_images"]
    chosen: dict[str, np.ndarray] = {}
    for p in _PARTS:
        images = arrays.get(f"{p}_images", np.zeros((0, *template.shape[1:]), template.dtype))
        labels = arrays.get(f"{p}_labels", np.zeros((0, *arrays["train_labels"].shape[1:]), arrays["train_labels"].dtype))
        flat = [str(v) for v in labels.reshape(len(labels), -1)[:, 0]] if len(labels) else []
        if p != "val" and len(images) < n:
            raise _fail(path, f"--hospitals: {n} hospitals but only {len(images)} {p} images")
        strata = flat if options.by == "stratified" else [""] * len(images)
        chosen[p] = _assign(len(images), strata, n, rng)
        arrays[f"{p}_images"], arrays[f"{p}_labels"] = images, labels
    written = []
    for h, hid in enumerate(ids):
        payload, mix, counts = {}, [], {}
        for p in _PARTS:
            mine = np.flatnonzero(chosen[p] == h)
            payload[f"{p}_images"], payload[f"{p}_labels"] = arrays[f"{p}_images"][mine], arrays[f"{p}_labels"][mine]
            counts[p] = len(mine)
            mix += [str(v) for v in payload[f"{p}_labels"].reshape(len(mine), -1)[:, 0]] if len(mine) else []
        target = out / f"{hid}.npz"
        np.savez_compressed(target, **payload)
        written.append(HospitalWritten(hid, target, "images", sum(counts.values()), sum(counts.values()), _mix(mix), counts))
    values = np.concatenate([arrays[f"{p}_labels"].reshape(-1) for p in _PARTS])
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
    name = _ID.sub("-", Path(source).stem).strip("-._") or "split"
    header = (f"# Written by `bioverse data split` from {source}: {len(hospitals)} hospitals.\n"
              "# Complete it: the feature columns and their ranges (tables) or the class names (images), "
              "then `bioverse experiment validate`.\n")
    taken = {result.label, result.patient_id, result.split_column}
    others = [c for c in result.columns if c not in taken]
    if others:
        header += f"# Columns to choose features from: {', '.join(others)}\n"
    return header + yaml.safe_dump({"name": f"{name}-split", "data": data}, sort_keys=False)
