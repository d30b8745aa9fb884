"""The hospital data contract refuses bad files with the file, column and row at fault."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.errors import DataContractError
from training.tabular.contract import DataContract, load_hospital_table, missing_code_counts, schema_fingerprint
from training.tabular.data import load_split

CONTRACT = DataContract("pid", "event", ("age", "sbp"), ("sex",))


def write(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads_with_types_and_missing_values(tmp_path: Path) -> None:
    path = write(tmp_path, "pid,age,sbp,sex,event,extra\np1,50,,F,1,x\np2,61,140,,0,y\np3,70,150,M,yes,z\n")
    frame = load_hospital_table(path, CONTRACT)
    assert list(frame.columns) == ["pid", "age", "sbp", "sex", "event"]
    assert frame["age"].tolist() == [50.0, 61.0, 70.0]
    assert pd.isna(frame.loc[0, "sbp"]) and frame.loc[1, "sex"] is None
    assert frame["event"].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pid,age,sex,event\np1,50,F,1\np2,40,M,0\n", ", column 'sbp': missing required column"),
        ("pid,age,sbp,sex,event\np1,50,120,F,1\np2,abc,120,M,0\n", ", column 'age', row 2: expected a number, got 'abc'"),
        ("pid,age,sbp,sex,event\np1,50,120,F,1\np2,40,120,M,2\n", ", column 'event', row 2: label must be binary"),
        ("pid,age,sbp,sex,event\np1,50,120,F,1\np2,40,120,M,\n", ", column 'event', row 2: label is missing"),
        ("pid,age,sbp,sex,event\np1,50,120,F,1\np2,40,120,M,1\n", ", column 'event': label has a single class"),
        ("pid,age,sbp,sex,event\np1,50,120,F,1\np1,40,120,M,0\n", ", column 'pid', row 2: duplicate patient id 'p1'"),
        ("pid,age,sbp,sex,event\n", ": file has no rows"),
        ("", ": file is empty"),
        ("pid,age,sbp,sex,event\np1,inf,120,F,1\np2,40,120,M,0\n", ", column 'age', row 1: infinite value"),
    ],
)
def test_contract_violations_name_file_column_and_row(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataContractError) as info:
        load_hospital_table(path, CONTRACT)
    assert str(info.value).startswith(f"{path}{expected}")
    assert "\n" not in str(info.value)


def test_unreadable_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataContractError, match="file not found"):
        load_hospital_table(tmp_path / "nope.csv", CONTRACT)
    with pytest.raises(DataContractError, match="unsupported file type"):
        load_hospital_table(write(tmp_path, "x", "h.xlsx"), CONTRACT)
    garbage = tmp_path / "bad.parquet"
    garbage.write_bytes(b"\x00\x01not parquet")
    with pytest.raises(DataContractError, match="unreadable"):
        load_hospital_table(garbage, CONTRACT)


def test_parquet_loads_like_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame({"pid": ["a", "b"], "age": [50, 60], "sbp": [120.0, None], "sex": ["F", "M"], "event": [True, False]})
    frame.to_parquet(tmp_path / "h.parquet")
    loaded = load_hospital_table(tmp_path / "h.parquet", CONTRACT)
    assert loaded["event"].tolist() == [1, 0] and pd.isna(loaded.loc[1, "sbp"])


def test_schema_fingerprint_tracks_schema_not_values(tmp_path: Path) -> None:
    a = load_hospital_table(write(tmp_path, "pid,age,sbp,sex,event\np1,50,120,F,1\np2,40,110,M,0\n", "a.csv"), CONTRACT)
    b = load_hospital_table(write(tmp_path, "pid,age,sbp,sex,event\nq1,80,160,M,0\nq2,30,100,F,1\n", "b.csv"), CONTRACT)
    c = load_hospital_table(write(tmp_path, "pid,age,sbp,sex,event\np1,50,120,F,1\np2,40,110,X,0\n", "c.csv"), CONTRACT)
    assert schema_fingerprint(a, CONTRACT) == schema_fingerprint(b, CONTRACT)
    assert schema_fingerprint(a, CONTRACT) != schema_fingerprint(c, CONTRACT)


def test_feature_only_contract_needs_no_label(tmp_path: Path) -> None:
    contract = DataContract("pid", None, ("age",), ("sex",))
    frame = load_hospital_table(write(tmp_path, "pid,age,sex\np1,50,F\np2,,M\n"), contract)
    assert list(frame.columns) == ["pid", "age", "sex"] and len(frame) == 2
    assert contract.required == ("pid", "age", "sex")


def test_missing_codes_become_missing_before_anything_else(tmp_path: Path) -> None:
    contract = DataContract("pid", "event", ("age", "chol"), ("sex",),
                            missing_codes=(("chol", ("0", "unknown")), ("sex", ("U",))))
    path = write(tmp_path, "pid,age,chol,sex,event\np1,50,0,F,1\np2,61,0.0,u,0\np3,70,unknown,M,1\np4,40,210,M,0\n")
    frame = load_hospital_table(path, contract)
    assert frame["chol"].isna().tolist() == [True, True, True, False]
    assert frame["sex"].tolist() == ["F", None, "M", "M"]
    assert missing_code_counts(path, contract) == {"chol": 3, "sex": 1}


def test_a_split_column_is_canonicalised_and_checked(tmp_path: Path) -> None:
    contract = DataContract("pid", "event", ("age",), ("sex",), split_column="part")
    path = write(tmp_path, "pid,age,sex,event,part\np1,50,F,1,Train\np2,61,M,0, validation\np3,70,M,1,TEST\np4,1,F,0,valid\n")
    assert load_hospital_table(path, contract)["part"].tolist() == ["train", "val", "test", "val"]
    bad = write(tmp_path, "pid,age,sex,event,part\np1,50,F,1,train\np2,61,M,0,holdout\n", "bad.csv")
    with pytest.raises(DataContractError, match=r"column 'part', row 2: split must be train, val or test, got 'holdout'"):
        load_hospital_table(bad, contract)
    empty = write(tmp_path, "pid,age,sex,event,part\np1,50,F,1,train\np2,61,M,0,\n", "empty.csv")
    with pytest.raises(DataContractError, match=r"column 'part', row 2: split must be"):
        load_hospital_table(empty, contract)


def _rows(n: int, parts: list[str] | None = None) -> str:
    lines = ["pid,age,sex,event" + (",part" if parts else "")]
    for i in range(n):
        lines.append(f"p{i},{40 + i},{'FM'[i % 2]},{i % 2}" + (f",{parts[i]}" if parts else ""))
    return "\n".join(lines) + "\n"


def test_the_split_comes_from_the_column_or_from_the_fractions(tmp_path: Path) -> None:
    parts = ["train"] * 10 + ["val"] * 4 + ["test"] * 6
    contract = DataContract("pid", "event", ("age",), ("sex",), split_column="part")
    split = load_split(write(tmp_path, _rows(20, parts), "fixed.csv"), contract, test_fraction=0.5)
    assert (len(split.train), len(split.val), len(split.test), split.source) == (10, 4, 6, "column")
    assert split.test["pid"].tolist() == [f"p{i}" for i in range(14, 20)] and "part" not in split.test.columns
    plain = DataContract("pid", "event", ("age",), ("sex",))
    split = load_split(write(tmp_path, _rows(100), "random.csv"), plain, test_fraction=0.2, val_fraction=0.1)
    assert (len(split.train), len(split.val), len(split.test), split.source) == (70, 10, 20, "random")
    assert not set(split.val["pid"]) & (set(split.train["pid"]) | set(split.test["pid"]))
    without = load_split(tmp_path / "random.csv", plain, test_fraction=0.2)
    assert (len(without.train), len(without.val), len(without.test)) == (80, 0, 20)


def test_a_split_column_without_test_rows_is_refused(tmp_path: Path) -> None:
    contract = DataContract("pid", "event", ("age",), ("sex",), split_column="part")
    path = write(tmp_path, _rows(6, ["train"] * 4 + ["val"] * 2), "notest.csv")
    with pytest.raises(DataContractError, match=r"notest.csv, column 'part': no test rows"):
        load_split(path, contract)


def test_a_split_column_without_train_rows_loads_but_cannot_train(tmp_path: Path) -> None:
    from training.tabular.data import HospitalDataModule
    from training.tabular.preprocessing import FeatureEncoder

    contract = DataContract("pid", "event", ("age",), ("sex",), split_column="part")
    path = write(tmp_path, _rows(6, ["test"] * 6), "onlytest.csv")
    assert len(load_split(path, contract).test) == 6  # a validator's file: all held out
    dm = HospitalDataModule(path, contract)
    dm.encoder = FeatureEncoder(("age",), ("sex",), (0.0,), (1.0,), (("F", "M"),))
    with pytest.raises(DataContractError, match=r"onlytest.csv, column 'part': no train rows"):
        dm.dataset("train")
    assert len(dm.dataset("test")) == 6
