"""``bioverse data check`` as a library (experiments.data_check): each hospital checked by its modality."""

from __future__ import annotations

from pathlib import Path

from experiments.data_check import check_data
from experiments.spec import parse_spec
from tests.conftest import spec_dict
from training.imaging.synth import synthesize_image_hospitals


def _tables(tmp_path: Path) -> list[Path]:
    """Three hospitals with a split column; the second writes smoking as 1.0 and has a code 'x'."""
    paths = []
    for h, (spell, extra) in enumerate([("{}", None), ("{}.0", "x"), ("{}", None)]):
        lines = ["patient_id,age,sex,smoking,cardiac_event,part"]
        for i in range(40):
            smoking = extra if extra and i < 6 else spell.format(i % 3)
            lines.append(f"p{h}-{i},{40 + i},{'FM'[i % 2]},{smoking},{i % 2},{['train', 'val', 'test', 'train'][i % 4]}")
        path = tmp_path / f"h{h + 1}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def _table_spec(paths: list[Path], **data: object) -> dict:
    return spec_dict(paths, data={"numeric": ["age"], "categorical": ["sex", "smoking"], "ranges": {"age": [0, 120]}, "split_column": "part",
                                  "categories": {"smoking": [0, 1, 2]}, **data}, strategy={"min_hospitals": 2})


def test_every_table_is_checked_and_a_broken_one_does_not_stop_the_others(tmp_path: Path) -> None:
    paths = _tables(tmp_path)
    paths[2].write_text("patient_id,age\np1,40\n")  # no label, no features: breaks the contract
    result = check_data(parse_spec(_table_spec(paths)))
    assert [s.hospital for s in result.sites] == ["h1", "h2"]
    assert "h1: ok, 40 patients: train 20, val 10, test 10 (split from column 'part'), prevalence 50.0%" in result.sites[0].lines
    assert "h2: smoking read as canonical values: '0.0' -> '0' (12), '1.0' -> '1' (11), '2.0' -> '2' (11)" in result.sites[1].lines
    assert all("only 10 held-out (test) patients" in s.warnings[0] for s in result.sites)
    (failure,) = result.failures
    assert failure.hospital == "h3" and failure.describe().startswith(f"h3: {paths[2]}")
    assert result.warnings == ["h2: smoking: 1 value outside the declared list: 'x' (6)"]
    assert not result.problems and not result.ok


def test_refused_categories_fail_the_check(tmp_path: Path) -> None:
    result = check_data(parse_spec(_table_spec(_tables(tmp_path), unknown_categories="refuse")))
    assert not result.failures and not result.warnings and not result.ok
    assert result.problems == ["h2: smoking: 1 value outside the declared list: 'x' (6) (data.unknown_categories: refuse)"]


def test_image_hospitals_and_deployment_sites(tmp_path: Path) -> None:
    (folder,) = synthesize_image_hospitals(tmp_path / "f", n_hospitals=1, images_per_hospital=40, size=16, layout="folder")
    spec = parse_spec({"name": "x", "seed": 4, "strategy": {"min_hospitals": 1}, "data": {
        "modality": "images", "classes": ["normal", "nodule", "opacity"], "image_size": 16, "channels": 1,
        "hospitals": [{"id": "h1", "path": str(folder)}, {"id": "remote"}]}})
    result = check_data(spec)
    assert result.ok and not result.warnings
    (line,) = result.sites[0].lines
    assert line.startswith("h1: ok, ") and "held-out images (normal " in line and "split from patients at random" in line
    assert result.sites[1].lines == ["remote: no path (deployment site, checked at the hospital)"]
