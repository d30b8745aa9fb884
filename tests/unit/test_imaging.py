"""Image loading, decoding and federated normalisation (training.imaging.data, .decode, .preprocessing)."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from training.errors import DataContractError, ImageDataError, ImageDecodeError
from training.imaging.data import ImageContract, image_fingerprint, load_image_split
from training.imaging.decode import decode_image
from training.imaging.preprocessing import ImagePreprocessor, class_counts, pixel_statistics

CLASSES = ("normal", "nodule", "opacity")
CONTRACT = ImageContract(CLASSES, size=16, channels=1)


def _png(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


def _folder(root: Path, rows: list[tuple[str, str, str]], *, value: int | None = None) -> Path:
    """Write labels.csv and a PNG for every listed image (pixel value = class index * 80, or ``value``)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["image,patient_id,label"]
    for image, patient, label in rows:
        target = root / image
        target.parent.mkdir(parents=True, exist_ok=True)
        level = value if value is not None else (CLASSES.index(label) if label in CLASSES else 0) * 80
        target.write_bytes(_png(np.full((16, 16), level, np.uint8)))
        lines.append(f"{image},{patient},{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _rows(n_patients: int, per_patient: int = 2) -> list[tuple[str, str, str]]:
    return [(f"img/p{p}-{k}.png", f"p{p}", CLASSES[p % 3]) for p in range(n_patients) for k in range(per_patient)]


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- decode_image -----------------------------------------------------------------------------


def test_decode_png_and_jpeg_to_the_contract_shape() -> None:
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 200
    for data in (_png(rgb), _jpeg(rgb)):
        gray = decode_image(data, size=16, channels=1)
        colour = decode_image(data, size=16, channels=3)
        assert gray.shape == (1, 16, 16) and gray.dtype == np.uint8
        assert colour.shape == (3, 16, 16) and colour.dtype == np.uint8
        assert abs(int(colour[0].mean()) - 200) <= 3 and colour[1].max() <= 5  # channel order kept
        assert abs(int(gray.mean()) - round(200 * 0.299)) <= 3  # ITU-R 601 luma


def test_decode_downsizing_is_antialiased() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = decode_image(_png(checker), size=16, channels=1)
    assert np.all(np.abs(small.astype(int) - 128) <= 10)  # averaged, not sampled to 0/255


def test_decode_checks_bytes_not_names() -> None:
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, format="GIF")
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(gif.getvalue(), size=8, channels=1, name="scan.png")
    assert _message(excinfo) == "scan.png: not a PNG or JPEG image"
    with pytest.raises(ImageDecodeError, match="upload: empty file"):
        decode_image(b"", size=8, channels=1)
    assert isinstance(excinfo.value, DataContractError)


def test_decode_refuses_truncated_and_corrupt_images() -> None:
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(data[: len(data) // 2], size=16, channels=1, name="half.png")
    assert _message(excinfo).startswith("half.png: corrupt or truncated image")
    jpeg = _jpeg(np.full((64, 64), 100, np.uint8))
    with pytest.raises(ImageDecodeError, match="bad.jpg: corrupt or truncated image"):
        decode_image(jpeg[:200], size=16, channels=1, name="bad.jpg")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decode_refuses_a_decompression_bomb_from_its_header() -> None:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10 gigapixels, 8-bit gray
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b""))
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(bomb, size=16, channels=1, name="bomb.png")
    assert "bomb.png: image too large" in _message(excinfo)
    assert time.perf_counter() - started < 1.0


def test_decode_scales_16_bit_png_to_8_bit() -> None:
    wide = np.array([[0, 257 * 128], [65535, 257 * 10]], dtype=np.uint16)
    wide = np.kron(wide, np.ones((8, 8), np.uint16))
    data = _png(wide)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data, size=16, channels=1)
    assert out[0, 0, 0] == 0 and out[0, 0, 15] == 128 and out[0, 15, 0] == 255 and out[0, 15, 15] == 10


def test_decode_applies_exif_orientation() -> None:
    pixels = np.zeros((32, 32), np.uint8)
    pixels[:16, :16] = 255  # bright top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    out = decode_image(_jpeg(pixels, exif=exif.tobytes()), size=16, channels=1)[0]
    assert out[:8, 8:].mean() > 200 and out[:8, :8].mean() < 50  # now top-right


# --- folder layout ----------------------------------------------------------------------------


def test_folder_split_is_by_patient_stratified_and_deterministic(tmp_path: Path) -> None:
    root = _folder(tmp_path / "site", _rows(30, per_patient=3))
    split = load_image_split(root, CONTRACT, test_fraction=0.2, seed=1)
    assert split.train_images.shape == (72, 1, 16, 16) and split.test_images.shape == (18, 1, 16, 16)
    assert split.train_images.dtype == np.uint8 and split.train_labels.dtype == np.int64
    assert split.train_patients is not None and split.test_patients is not None
    assert len(split.train_patients) == 72 and not set(split.train_patients) & set(split.test_patients)
    assert class_counts(split.test_labels, 3) == [6, 6, 6]  # stratified: 2 patients per class
    np.testing.assert_array_equal(split.train_images[:, 0, 0, 0], split.train_labels * 80)  # labels follow images
    again = load_image_split(root / "labels.csv", CONTRACT, test_fraction=0.2, seed=1)
    assert again.test_patients == split.test_patients
    other = load_image_split(root, CONTRACT, test_fraction=0.2, seed=2)
    assert other.test_patients != split.test_patients


def test_val_fraction_moves_training_patients_only(tmp_path: Path) -> None:
    root = _folder(tmp_path / "site", _rows(30, per_patient=3))
    plain = load_image_split(root, CONTRACT, test_fraction=0.2, seed=1)
    split = load_image_split(root, CONTRACT, test_fraction=0.2, seed=1, val_fraction=0.2)
    assert split.source == "fraction" and split.test_patients == plain.test_patients  # the test part is unchanged
    assert split.counts() == {"train": 54, "val": 18, "test": 18}
    val, train, test = set(split.val_patients or ()), set(split.train_patients or ()), set(split.test_patients or ())
    assert len(val) == 6 and not val & train and not val & test
    assert class_counts(split.val_labels, 3) == [6, 6, 6]  # stratified: 2 patients per class
    assert plain.val_images.shape == (0, 1, 16, 16) and plain.val_patients == ()
    with pytest.raises(ValueError, match="val_fraction must be at least 0 and below 1 - test_fraction"):
        load_image_split(root, CONTRACT, test_fraction=0.5, val_fraction=0.5)


def test_unsplit_puts_every_image_in_the_test_part(tmp_path: Path) -> None:
    root = _folder(tmp_path / "one", _rows(1, per_patient=4))  # one patient: no split is possible, none is needed
    split = load_image_split(root, CONTRACT, unsplit=True)
    assert split.source == "unsplit" and split.counts() == {"train": 0, "val": 0, "test": 4}
    assert split.test_patients == ("p0",) * 4
    with pytest.raises(ImageDataError, match="1 patient\\(s\\); a split in 2 parts needs at least 2"):
        load_image_split(root, CONTRACT)


def _with_split(root: Path, parts: list[str], header: str = "split") -> Path:
    csv = root / "labels.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([f"{lines[0]},{header}"] + [f"{line},{part}" for line, part in zip(lines[1:], parts)]) + "\n")
    return root


def test_a_split_column_fixes_the_parts(tmp_path: Path) -> None:
    rows = _rows(6, per_patient=2)  # patients p0..p5, two images each
    spellings = ["train", "TRAIN", " Train ", "training", "Validation", "val", "valid", "VAL", "test", "Test", "TEST", "test"]
    root = _with_split(_folder(tmp_path / "site", rows), spellings)
    contract = ImageContract(CLASSES, size=16, channels=1, split_column="split")
    split = load_image_split(root, contract, test_fraction=0.5, seed=3, val_fraction=0.3)  # fractions do not apply
    assert split.source == "column" and split.counts() == {"train": 4, "val": 4, "test": 4}
    assert set(split.train_patients or ()) == {"p0", "p1"} and set(split.val_patients or ()) == {"p2", "p3"}
    assert set(split.test_patients or ()) == {"p4", "p5"}
    np.testing.assert_array_equal(split.val_images[:, 0, 0, 0], split.val_labels * 80)  # labels follow images
    without = load_image_split(root, CONTRACT, test_fraction=0.5, seed=3)  # the column not declared: ignored
    assert without.source == "fraction"
    plain = _folder(tmp_path / "plain", rows)
    with pytest.raises(ImageDataError, match="missing required column\\(s\\) 'split'"):  # declared: required
        load_image_split(plain, contract)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["train"] * 3 + ["tst"] + ["test"] * 8, "column 'split', row 4: split value 'tst' is not train, val or test"),
        (["train"] * 3 + [""] + ["test"] * 8, "row 4: split value '' is not train, val or test"),
        (["train", "test"] + ["train"] * 4 + ["test"] * 6, "column 'split': 1 patient(s) in more than one part: p0 (test, train)"),
        (["train"] * 4 + ["val"] * 8, "column 'split': no image marked test"),
    ],
)
def test_a_bad_split_column_is_refused_naming_row_value_or_patient(tmp_path: Path, parts: list[str],
                                                                     expected: str) -> None:
    root = _with_split(_folder(tmp_path / "site", _rows(6, per_patient=2)), parts)
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(root, ImageContract(CLASSES, size=16, channels=1, split_column="split"))
    message = _message(excinfo)
    assert message.startswith(str(root / "labels.csv")) and expected in message


def test_labels_may_be_class_indices_and_are_cached(tmp_path: Path) -> None:
    rows = [(f"p{p}.png", f"p{p}", str(p % 3)) for p in range(10)]
    root = _folder(tmp_path / "site", rows, value=7)
    split = load_image_split(root, CONTRACT)
    assert sorted(np.concatenate([split.train_labels, split.test_labels]).tolist()) == sorted(p % 3 for p in range(10))
    assert load_image_split(root, CONTRACT) is split
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("p9.png,p9,0\n", ""))
    os.utime(csv, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert len(load_image_split(root, CONTRACT).train_labels) + len(load_image_split(root, CONTRACT).test_labels) == 9


def test_loading_thousands_of_small_pngs_is_fast(tmp_path: Path) -> None:
    root = tmp_path / "big"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image,patient_id,label"]
    for i in range(2000):
        (root / "img" / f"{i}.png").write_bytes(_png(rng.integers(0, 255, (28, 28), dtype=np.uint8)))
        lines.append(f"img/{i}.png,p{i // 4},{CLASSES[(i // 4) % 3]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    split = load_image_split(root, ImageContract(CLASSES, size=28, channels=1))
    assert time.perf_counter() - started < 2.0
    assert len(split.train_images) + len(split.test_images) == 2000


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("file,patient_id\n", "missing required column(s) 'image', 'label'"),
        ("image,patient_id,label\n", "file has no rows"),
        ("image,patient_id,label\na.png,,normal\n", "column 'patient_id', row 1: empty cell"),
        ("image,patient_id,label\n../x.png,p1,normal\n/etc/passwd,p2,normal\n",
         "2 image path(s) leave the folder: ../x.png, /etc/passwd"),
    ],
)
def test_bad_labels_csv_is_refused_naming_the_file(tmp_path: Path, csv: str, expected: str) -> None:
    (tmp_path / "labels.csv").write_text(csv)
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(tmp_path, CONTRACT)
    message = _message(excinfo)
    assert message.startswith(str(tmp_path / "labels.csv")) and expected in message


def test_missing_files_are_named_five_at_most(tmp_path: Path) -> None:
    root = _folder(tmp_path, _rows(6, per_patient=1))
    for p in range(6):
        (root / f"img/p{p}-0.png").unlink()
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(root, CONTRACT)
    assert _message(excinfo).endswith(
        "column 'image': 6 image file(s) not found: img/p0-0.png, img/p1-0.png, img/p2-0.png, "
        "img/p3-0.png, img/p4-0.png and 1 more")


def test_unreadable_and_non_png_images_are_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, _rows(4, per_patient=1))
    (root / "img/p1-0.png").write_bytes(b"GIF89a not really")
    good = (root / "img/p2-0.png").read_bytes()
    (root / "img/p2-0.png").write_bytes(good[:30])
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(root, CONTRACT)
    message = _message(excinfo)
    assert "2 image(s) cannot be read: img/p1-0.png (not a PNG or JPEG image), img/p2-0.png (corrupt" in message


def test_mislabelled_and_conflicting_images_are_named(tmp_path: Path) -> None:
    rows = _rows(4, per_patient=1) + [("img/p5.png", "p5", "tumour"), ("img/p6.png", "p6", "7")]
    root = _folder(tmp_path / "a", rows)
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(root, CONTRACT)
    assert ("column 'label': 2 mislabelled image(s), labels must be one of ['normal', 'nodule', 'opacity']: "
            "img/p5.png (label 'tumour'), img/p6.png (label '7')") in _message(excinfo)

    root = _folder(tmp_path / "b", _rows(4, per_patient=1) + [("./img/p0-0.png", "p0", "nodule")])
    with pytest.raises(ImageDataError, match=r"1 image\(s\) listed twice with different labels: img/p0-0.png"):
        load_image_split(root, CONTRACT)
    root = _folder(tmp_path / "c", _rows(4, per_patient=1) + [("img/p0-0.png", "p9", "normal")])
    with pytest.raises(ImageDataError, match="listed twice with different patients: img/p0-0.png"):
        load_image_split(root, CONTRACT)
    root = _folder(tmp_path / "d", _rows(4, per_patient=1) + [("img/p0-0.png", "p0", "normal")])
    split = load_image_split(root, CONTRACT)  # an exact repeat is harmless: kept once
    assert len(split.train_labels) + len(split.test_labels) == 4


def test_a_split_needs_two_patients_and_a_known_source(tmp_path: Path) -> None:
    root = _folder(tmp_path / "one", [("a.png", "p1", "normal"), ("b.png", "p1", "nodule")])
    with pytest.raises(ImageDataError, match="1 patient"):
        load_image_split(root, CONTRACT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match="no labels.csv in the folder"):
        load_image_split(tmp_path / "empty", CONTRACT)
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(ImageDataError, match="unsupported"):
        load_image_split(tmp_path / "x.zip", CONTRACT)
    with pytest.raises(ImageDataError, match="missing.npz: no such folder or file"):
        load_image_split(tmp_path / "missing.npz", CONTRACT)
    with pytest.raises(ValueError, match="test_fraction"):
        load_image_split(root, CONTRACT, test_fraction=1.0)


# --- MedMNIST .npz ----------------------------------------------------------------------------


def _npz(path: Path, shape: tuple[int, ...], override: dict[str, np.ndarray] | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {}
    for part, n in (("train", 10), ("val", 4), ("test", 6)):
        arrays[f"{part}_images"] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        arrays[f"{part}_labels"] = rng.integers(0, 3, (n, 1)).astype(np.uint8)
    arrays.update(override or {})
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_keeps_pixels_and_labels_and_the_val_part_apart(tmp_path: Path) -> None:
    path = _npz(tmp_path / "site.npz", (16, 16))
    split = load_image_split(path, CONTRACT)
    with np.load(path) as raw:
        np.testing.assert_array_equal(split.train_images[:, 0], raw["train_images"])  # val is not trained on
        np.testing.assert_array_equal(split.train_labels, raw["train_labels"][:, 0])
        np.testing.assert_array_equal(split.val_images[:, 0], raw["val_images"])
        np.testing.assert_array_equal(split.val_labels, raw["val_labels"][:, 0])
        np.testing.assert_array_equal(split.test_images[:, 0], raw["test_images"])
    assert split.train_labels.dtype == np.int64 and split.val_labels.dtype == np.int64 and split.train_patients is None
    assert split.source == "npz" and split.counts() == {"train": 10, "val": 4, "test": 6}
    empty_val = _npz(tmp_path / "noval.npz", (16, 16), {"val_images": np.zeros((0, 16, 16), np.uint8),
                                                       "val_labels": np.zeros((0, 1), np.uint8)})
    assert load_image_split(empty_val, CONTRACT).val_images.shape == (0, 1, 16, 16)
    no_train = _npz(tmp_path / "notrain.npz", (16, 16), {"train_images": np.zeros((0, 16, 16), np.uint8),
                                                         "train_labels": np.zeros((0, 1), np.uint8)})
    with pytest.raises(ImageDataError, match="no images in train_images"):  # val images do not make up for it
        load_image_split(no_train, CONTRACT)


def test_npz_rgb_is_channels_first_and_resized(tmp_path: Path) -> None:
    images = np.zeros((6, 32, 32, 3), np.uint8)
    images[..., 0], images[..., 2] = 250, 40
    path = _npz(tmp_path / "rgb.npz", (32, 32, 3), {"test_images": images})
    split = load_image_split(path, ImageContract(CLASSES, size=16, channels=3))
    assert split.test_images.shape == (6, 3, 16, 16) and split.train_images.shape == (10, 3, 16, 16)
    assert np.all(split.test_images[:, 0] == 250) and np.all(split.test_images[:, 1] == 0)
    assert np.all(split.test_images[:, 2] == 40)
    gray = load_image_split(path, CONTRACT)
    assert gray.test_images.shape == (6, 1, 16, 16)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"test_labels": np.zeros((6, 14), np.uint8)},
         "'test_labels' has shape (6, 14): multi-label data is not supported"),
        ({"val_labels": np.array([[0], [1], [5], [2]], np.uint8)},
         "'val_labels': 1 mislabelled image(s), labels must be class indices 0..2: index 2 (label 5)"),
        ({"train_images": np.zeros((10, 16, 16), np.float32)}, "'train_images' must hold uint8"),
        ({"test_images": np.zeros((0, 16, 16), np.uint8), "test_labels": np.zeros((0, 1), np.uint8)},
         "no images in test_images"),
    ],
)
def test_bad_npz_is_refused_naming_the_file(tmp_path: Path, override: dict[str, np.ndarray], expected: str) -> None:
    path = _npz(tmp_path / "bad.npz", (16, 16), override)
    with pytest.raises(ImageDataError) as excinfo:
        load_image_split(path, CONTRACT)
    message = _message(excinfo)
    assert message.startswith(str(path)) and expected in message


def test_npz_missing_arrays_or_garbage_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ImageDataError, match="not in the MedMNIST layout, missing train_labels, val_images"):
        load_image_split(tmp_path / "partial.npz", CONTRACT)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageDataError, match="junk.npz: unreadable .npz"):
        load_image_split(tmp_path / "junk.npz", CONTRACT)


# --- statistics, preprocessor, fingerprint ----------------------------------------------------


def test_pooled_mean_and_std_equal_the_pooled_computation() -> None:
    rng = np.random.default_rng(3)
    sites = [rng.integers(lo, 256, (n, 3, 8, 8), dtype=np.uint8) for lo, n in ((0, 5), (60, 11), (120, 2))]
    pre = ImagePreprocessor.from_statistics([pixel_statistics(s) for s in sites], size=8, channels=3, classes=CLASSES)
    pooled = np.concatenate(sites).astype(np.float64) / 255.0
    np.testing.assert_allclose(pre.mean, pooled.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pre.std, pooled.std(axis=(0, 2, 3)), rtol=0, atol=1e-9)
    assert pre.num_classes == 3 and pixel_statistics(sites[0])["pixels"] == 5 * 64

    x = torch.as_tensor(sites[1])
    expected = (pooled[5:16] - np.asarray(pre.mean)[:, None, None]) / np.asarray(pre.std)[:, None, None]
    out = pre.normalise(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert ImagePreprocessor.from_json(pre.to_json()) == pre


def test_given_mean_and_std_win_and_bad_statistics_are_refused() -> None:
    stats = [pixel_statistics(np.full((2, 1, 4, 4), 128, np.uint8))]
    flat = ImagePreprocessor.from_statistics(stats, size=4, channels=1, classes=CLASSES)
    assert flat.std == (1.0,)  # a constant image set does not divide by zero
    given = ImagePreprocessor.from_statistics([], size=4, channels=3, classes=CLASSES,
                                              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert given.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="3 channel"):
        ImagePreprocessor.from_statistics(stats, size=4, channels=3, classes=CLASSES)
    with pytest.raises(ValueError, match="no pixel statistics"):
        ImagePreprocessor.from_statistics([], size=4, channels=1, classes=CLASSES)


def test_class_counts_and_fingerprint() -> None:
    assert class_counts(np.array([0, 2, 2, 0, 2]), 4) == [2, 0, 3, 0]
    with pytest.raises(ValueError):
        class_counts(np.array([3]), 3)
    base = image_fingerprint(CONTRACT)
    listed = ImageContract(list(CLASSES), size=16, channels=1, image_column="file")  # type: ignore[arg-type]
    assert base == image_fingerprint(listed) and listed.classes == CLASSES
    changed = {image_fingerprint(ImageContract(CLASSES[::-1], 16, 1)), image_fingerprint(ImageContract(CLASSES, 32, 1)),
               image_fingerprint(ImageContract(CLASSES, 16, 3))}
    assert base not in changed and len(changed) == 3
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageContract(CLASSES, 16, 2)


def test_metadata_columns_travel_with_the_held_out_images(tmp_path: Path) -> None:
    import dataclasses

    import pandas as pd

    from training.imaging.synth import synthesize_image_hospitals

    (folder,) = synthesize_image_hospitals(tmp_path / "f", n_hospitals=1, images_per_hospital=60, size=16, layout="folder")
    contract = dataclasses.replace(ImageContract(("normal", "nodule", "opacity"), size=16, channels=1), metadata=("sex", "age"))
    split = load_image_split(folder, contract, 0.3, seed=1)
    assert split.test_metadata is not None and set(split.test_metadata) == {"sex", "age"}
    frame = pd.read_csv(folder / "labels.csv", dtype=str).set_index("patient_id")
    expected = [frame.loc[[p], "sex"].iloc[0] for p in split.test_patients or ()]
    assert list(split.test_metadata["sex"]) == expected and len(expected) == len(split.test_labels)
    assert split.train_metadata is not None and len(split.train_metadata["age"]) == len(split.train_labels)
    labels = folder / "labels.csv"
    labels.write_text(labels.read_text().replace(",sex,age\n", ",gender,age\n", 1))
    with pytest.raises(ImageDataError, match="missing required column\\(s\\) 'sex'"):
        load_image_split(folder, contract, 0.3, seed=1)
    (npz,) = synthesize_image_hospitals(tmp_path / "n", n_hospitals=1, images_per_hospital=60, size=16, layout="npz")
    with pytest.raises(ImageDataError, match="a .npz holds no per-image metadata \\(sex, age\\)"):
        load_image_split(npz, contract)
