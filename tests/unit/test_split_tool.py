"""`bioverse data split`: simulated hospitals from one table, image folder or .npz (training.split_tool, training.split_plan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from experiments.spec import load_spec
from platform_api.cli import app
from training.errors import DataSplitError
from training.imaging.data import ImageContract, load_image_split
from training.split_plan import SplitOptions
from training.split_tool import spec_skeleton, split_dataset

runner = CliRunner()


def _table(n_patients: int = 120, rows_per_patient: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patients = [f"p{i:04d}" for i in range(n_patients)]
    label = (rng.random(n_patients) < 0.2).astype(int)  # 80/20 imbalance
    part = rng.choice(["Train", "validation", " test "], size=n_patients, p=[0.6, 0.2, 0.2])  # spellings the contract accepts
    centre = rng.choice(["St Mary's", "Royal Free"], size=n_patients)
    rows = [{"patient_id": p, "age": f"{40 + i % 30}.0", "outcome": str(label[i]), "split": part[i], "centre": centre[i]}
            for i, p in enumerate(patients) for _ in range(rows_per_patient)]
    return pd.DataFrame(rows)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)


def _hospitals(result) -> list[pd.DataFrame]:  # type: ignore[no-untyped-def]
    return [_read(h.path) for h in result.hospitals]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_random_keeps_every_row_once_and_patients_whole(tmp_path: Path, suffix: str) -> None:
    frame = _table()
    source = _write(frame, tmp_path / f"all{suffix}")
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=3, seed=5, label="outcome"))
    assert [h.hospital_id for h in result.hospitals] == ["hospital-01", "hospital-02", "hospital-03"]
    assert all(h.path.suffix == suffix for h in result.hospitals)
    parts = _hospitals(result)
    assert sum(map(len, parts)) == len(frame)
    owners = pd.concat([p.assign(h=i) for i, p in enumerate(parts)]).groupby("patient_id")["h"].nunique()
    assert (owners == 1).all()  # no patient straddles hospitals
    assert max(map(len, parts)) - min(map(len, parts)) <= 2 * 3  # equal shares (patients of 2 rows, 3 parts)
    if suffix == ".csv":
        assert set(pd.concat(parts)["age"]) == set(frame["age"])  # cells written as read ("40.0" stays "40.0")
    again = split_dataset(source, tmp_path / "again", SplitOptions(hospitals=3, seed=5, label="outcome"))
    assert all(a.equals(b) for a, b in zip(parts, _hospitals(again), strict=True))  # same seed, same hospitals


def test_existing_split_is_kept_and_divided(tmp_path: Path) -> None:
    frame = _table()
    source = _write(frame, tmp_path / "all.csv")
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=4, label="outcome"))
    assert result.split_column == "split"
    canonical = {"Train": "train", "validation": "val", " test ": "test"}
    for h, part in zip(result.hospitals, _hospitals(result), strict=True):
        counts = part["split"].map(canonical).value_counts()
        assert h.parts == {p: int(counts.get(p, 0)) for p in ("train", "val", "test")}
        assert all(h.parts[p] > 0 for p in ("train", "val", "test"))
    merged = pd.concat(_hospitals(result)).sort_values(["patient_id"], kind="stable")
    original = frame.sort_values(["patient_id"], kind="stable")
    assert merged["split"].tolist() == original["split"].tolist()  # each row keeps its part


def test_stratified_gives_every_hospital_the_class_mix(tmp_path: Path) -> None:
    frame = _table(n_patients=200, rows_per_patient=1)
    source = _write(frame.drop(columns=["split"]), tmp_path / "all.csv")
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=5, by="stratified", label="outcome"))
    positives = [h.classes.get("1", 0) for h in result.hospitals]
    assert max(positives) - min(positives) <= 1
    assert sum(positives) == int((frame["outcome"] == "1").sum())
    assert all(h.parts is None for h in result.hospitals)
    assert "hospital-01: 40 rows, 40 patients (0: " in result.hospitals[0].line()


def test_by_column_makes_one_hospital_per_value(tmp_path: Path) -> None:
    frame = _table()
    source = _write(frame, tmp_path / "all.csv")
    result = split_dataset(source, tmp_path / "out", SplitOptions(by="centre", label="outcome"))
    assert [h.hospital_id for h in result.hospitals] == ["Royal-Free", "St-Mary-s"]
    for h, part in zip(result.hospitals, _hospitals(result), strict=True):
        assert part["centre"].nunique() == 1 and h.count == len(part)
    with pytest.raises(DataSplitError, match="--hospitals: 3 given but column 'centre' has 2 values"):
        split_dataset(source, tmp_path / "x", SplitOptions(hospitals=3, by="centre"))


def test_patient_under_two_centres_refused(tmp_path: Path) -> None:
    frame = _table()
    frame.loc[1, "centre"] = "Royal Free" if frame.loc[0, "centre"] == "St Mary's" else "St Mary's"
    source = _write(frame, tmp_path / "all.csv")
    with pytest.raises(DataSplitError, match="patient 'p0000' appears under two values of 'centre'"):
        split_dataset(source, tmp_path / "out", SplitOptions(by="centre"))


@pytest.mark.parametrize(
    ("change", "options", "match"),
    [
        (lambda f: f, SplitOptions(hospitals=500), "500 hospitals but only 120 patients"),
        (lambda f: f, SplitOptions(hospitals=60), "would get no (train|test) rows"),
        (lambda f: f, SplitOptions(hospitals=2, by="stratified"), "--label: name the label column"),
        (lambda f: f, SplitOptions(hospitals=2, label="nope"), "--label: no column 'nope'"),
        (lambda f: f, SplitOptions(by="ward"), "--by: no column 'ward'"),
        (lambda f: f, SplitOptions(), "--hospitals: give how many"),
        (lambda f: f.assign(split=["later"] + ["train"] * (len(f) - 1)), SplitOptions(hospitals=2),
         "column 'split', row 1: split value 'later' is not train, val or test"),
        (lambda f: f.assign(patient_id=[""] + list(f["patient_id"][1:])), SplitOptions(hospitals=2),
         "column 'patient_id', row 1: empty cell"),
    ],
)
def test_bad_input_is_named(tmp_path: Path, change, options: SplitOptions, match: str) -> None:  # type: ignore[no-untyped-def]
    source = _write(change(_table()), tmp_path / "all.csv")
    with pytest.raises(DataSplitError, match=match):
        split_dataset(source, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()  # nothing half written


def test_unknown_layouts_and_existing_targets_refused(tmp_path: Path) -> None:
    with pytest.raises(DataSplitError, match="no such file"):
        split_dataset(tmp_path / "none.csv", tmp_path / "out", SplitOptions(hospitals=2))
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataSplitError, match="unknown layout .json"):
        split_dataset(tmp_path / "data.json", tmp_path / "out", SplitOptions(hospitals=2))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataSplitError, match="file is empty"):
        split_dataset(tmp_path / "empty.csv", tmp_path / "out", SplitOptions(hospitals=2))
    source = _write(_table(), tmp_path / "all.csv")
    split_dataset(source, tmp_path / "out", SplitOptions(hospitals=2))
    with pytest.raises(DataSplitError, match="hospital-01.csv exists there"):
        split_dataset(source, tmp_path / "out", SplitOptions(hospitals=2))


def _image_folder(root: Path, n_patients: int = 24, per_patient: int = 2, split: bool = True) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_patients):
        part = ("train", "train", "val", "test")[p % 4]
        for k in range(per_patient):
            name = f"img/{p:03d}_{k}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / name)
            rows.append({"image": name, "patient_id": f"pt{p}", "label": ("normal", "nodule")[p % 3 == 0],
                         **({"split": part} if split else {})})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_image_folder_links_images_and_keeps_the_split(tmp_path: Path) -> None:
    source = _image_folder(tmp_path / "src")
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=3, by="stratified"))
    assert result.layout == "images" and result.classes == ["nodule", "normal"]
    assert result.linked + result.copied == 48
    contract = ImageContract(classes=("normal", "nodule"), size=8, channels=1, split_column="split")
    seen: set[str] = set()
    for h in result.hospitals:
        labels = pd.read_csv(h.path / "labels.csv")
        assert not seen & set(labels["patient_id"])  # no patient in two hospitals
        seen |= set(labels["patient_id"])
        for image in labels["image"]:
            assert (h.path / image).read_bytes() == (source / image).read_bytes()
        split = load_image_split(h.path, contract)  # the hospital loads as an experiment would
        assert split.counts() == h.parts and split.source == "column"
    assert len(seen) == 24


def test_image_folder_bad_paths_refused(tmp_path: Path) -> None:
    source = _image_folder(tmp_path / "src", split=False)
    labels = pd.read_csv(source / "labels.csv")
    labels.loc[3, "image"] = "../../etc/passwd"
    labels.to_csv(source / "labels.csv", index=False)
    with pytest.raises(DataSplitError, match="column 'image', row 4: image path '../../etc/passwd' leaves the folder"):
        split_dataset(source, tmp_path / "out", SplitOptions(hospitals=2))
    labels.loc[3, "image"] = "img/missing.png"
    labels.to_csv(source / "labels.csv", index=False)
    with pytest.raises(DataSplitError, match="image 'img/missing.png' not found"):
        split_dataset(source / "labels.csv", tmp_path / "out", SplitOptions(hospitals=2))
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataSplitError, match="must hold labels.csv"):
        split_dataset(tmp_path / "bare", tmp_path / "out", SplitOptions(hospitals=2))


def _npz(path: Path, with_val: bool = True) -> Path:
    rng = np.random.default_rng(2)
    arrays = {}
    for part, n in (("train", 60), ("val", 20), ("test", 30)):
        if part == "val" and not with_val:
            continue
        arrays[f"{part}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(n) % 10 == 0).astype(np.uint8)[:, None]  # 90/10, MedMNIST's (N, 1)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("with_val", [True, False])
def test_npz_parts_divided_among_hospitals(tmp_path: Path, with_val: bool) -> None:
    source = _npz(tmp_path / "all.npz", with_val)
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=3, by="stratified", seed=1))
    contract = ImageContract(classes=("a", "b"), size=8, channels=1)
    total = {"train": 0, "val": 0, "test": 0}
    for h in result.hospitals:
        with np.load(h.path) as npz:
            assert sorted(npz.files) == sorted(f"{p}_{k}" for p in ("train", "val", "test") for k in ("images", "labels"))
            assert npz["train_labels"].shape[1:] == (1,)
            assert int(npz["train_labels"].sum()) == 2 and int(npz["test_labels"].sum()) == 1  # stratified: 6/3 positives
        split = load_image_split(h.path, contract)
        assert split.counts() == h.parts and split.source == "npz"
        for p in total:
            total[p] += h.parts[p]  # type: ignore[index]
    assert total == {"train": 60, "val": 20 if with_val else 0, "test": 30}
    with pytest.raises(DataSplitError, match="a .npz has no columns"):
        split_dataset(source, tmp_path / "x", SplitOptions(by="centre"))
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 8, 8)))
    with pytest.raises(DataSplitError, match="needs train_images"):
        split_dataset(tmp_path / "bad.npz", tmp_path / "y", SplitOptions(hospitals=2))


def test_spec_skeleton_lists_the_hospitals(tmp_path: Path) -> None:
    source = _write(_table(), tmp_path / "all.csv")
    result = split_dataset(source, tmp_path / "out", SplitOptions(hospitals=2, label="outcome"))
    spec = yaml.safe_load(spec_skeleton(result, tmp_path / "specs" / "s.yaml", source))
    assert spec["data"]["label"] == "outcome" and spec["data"]["split_column"] == "split"
    assert [h["path"] for h in spec["data"]["hospitals"]] == ["../out/hospital-01.csv", "../out/hospital-02.csv"]
    folder = split_dataset(_image_folder(tmp_path / "img"), tmp_path / "img-out", SplitOptions(hospitals=2))
    (tmp_path / "i.yaml").write_text(spec_skeleton(folder, tmp_path / "i.yaml", tmp_path / "img"))
    images = load_spec(tmp_path / "i.yaml")  # an image skeleton is a valid spec as written
    assert images.data.classes == ["nodule", "normal"] and images.data.split_column == "split"
    npz = tmp_path / "gap.npz"
    np.savez(npz, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([[0], [2], [0], [2]]),
             test_images=np.zeros((2, 8, 8), np.uint8), test_labels=np.array([[0], [2]]))
    parts = split_dataset(npz, tmp_path / "npz-out", SplitOptions(hospitals=2))
    (tmp_path / "n.yaml").write_text(spec_skeleton(parts, tmp_path / "n.yaml", npz))
    assert load_spec(tmp_path / "n.yaml").data.classes == ["class-0", "class-1", "class-2"]  # labels index classes


def test_cli_prints_a_line_per_hospital_and_writes_the_spec(tmp_path: Path) -> None:
    source = _write(_table(), tmp_path / "all.csv")
    result = runner.invoke(app, ["data", "split", str(source), "--hospitals", "3", "--by", "stratified", "--label", "outcome",
                                 "--out", str(tmp_path / "out"), "--spec", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["hospital-01", "hospital-02", "hospital-03"]
    assert "train " in lines[0] and " / val " in lines[0] and "(0: " in lines[0]
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["data"]["hospitals"][2]["id"] == "hospital-03"
    bad = runner.invoke(app, ["data", "split", str(source), "--hospitals", "2", "--by", "ward", "--out", str(tmp_path / "o2")])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "--by: no column 'ward'" in lines[0]


def test_split_hospitals_pass_data_check_with_their_split(tmp_path: Path) -> None:
    """End to end through the CLI: one synthetic site with a fixed split -> three hospitals
    -> `bioverse data check` on the skeleton, completed, reads each hospital's own split."""
    from tests.conftest import spec_dict

    made = runner.invoke(app, ["data", "synth", "--hospitals", "1", "--patients", "600", "--split-column", "split",
                               "--out", str(tmp_path / "src")])
    assert made.exit_code == 0, made.output
    source = next((tmp_path / "src").glob("hospital-*.csv"))
    split = runner.invoke(app, ["data", "split", str(source), "--hospitals", "3", "--by", "stratified",
                                "--label", "cardiac_event", "--prefix", "site", "--out", str(tmp_path / "sites"),
                                "--spec", str(tmp_path / "spec.yaml")])
    assert split.exit_code == 0, split.output
    skeleton = (tmp_path / "spec.yaml").read_text()
    assert "# Columns to choose features from: age, sex," in skeleton
    data = yaml.safe_load(skeleton)["data"]
    spec = spec_dict([Path(h["path"]) for h in data["hospitals"]])
    spec["data"].update(hospitals=data["hospitals"], split_column=data["split_column"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "spec.yaml")])
    assert checked.exit_code == 0, checked.output
    assert [line.split(":")[0] for line in checked.output.splitlines() if ": ok" in line] == ["site-01", "site-02", "site-03"]


def test_cli_refuses_bad_prefix_and_existing_spec_in_one_line(tmp_path: Path) -> None:
    source = _write(_table(), tmp_path / "all.csv")
    (tmp_path / "spec.yaml").write_text("keep me")
    for extra, match in ((["--prefix", "-x"], "--prefix: '-x' makes no valid hospital id"),
                         (["--spec", str(tmp_path / "spec.yaml")], "--spec: the file exists")):
        bad = runner.invoke(app, ["data", "split", str(source), "--hospitals", "2", "--out", str(tmp_path / "o"), *extra])
        lines = [line for line in bad.output.splitlines() if line.strip()]
        assert bad.exit_code == 1 and len(lines) == 1 and match in lines[0], bad.output
    assert (tmp_path / "spec.yaml").read_text() == "keep me" and not (tmp_path / "o").exists()


def test_image_folder_by_column(tmp_path: Path) -> None:
    source = _image_folder(tmp_path / "src")
    labels = pd.read_csv(source / "labels.csv")
    labels["site"] = ["north" if int(p[2:]) < 12 else "south" for p in labels["patient_id"]]
    labels.to_csv(source / "labels.csv", index=False)
    result = split_dataset(source, tmp_path / "out", SplitOptions(by="site"))
    assert [h.hospital_id for h in result.hospitals] == ["north", "south"]
    assert [h.count for h in result.hospitals] == [24, 24] and all(h.parts for h in result.hospitals)
    north = pd.read_csv(tmp_path / "out" / "north" / "labels.csv")
    assert set(north["site"]) == {"north"} and all((tmp_path / "out" / "north" / i).is_file() for i in north["image"])
