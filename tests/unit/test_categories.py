"""Canonical categories: one spelling per category at load, in statistics, at encoding and scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.categories import CategoryLookup, canonical, canonical_series
from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.dp_statistics import dp_table_statistics
from training.tabular.models import build_model
from training.tabular.package import save_package_files
from training.tabular.preprocessing import FeatureEncoder, local_statistics
from training.tabular.scoring import RiskScorer


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", "4"), (" 4.0 ", "4"), ("+4", "4"), ("04", "4"), ("4.00", "4"), ("4e0", "4"), (4, "4"), (4.0, "4"),
     (np.int64(4), "4"), (2.5, "2.5"), ("2.50", "2.5"), (".5", "0.5"), ("-0", "0"), ("1e-3", "0.001"),
     ("  chest   pain ", "chest pain"), ("Male", "Male"), (True, "true"), (np.bool_(False), "false"),
     ("", None), ("   ", None), (None, None), (float("nan"), None), ("1_000", "1_000"), ("nan", "nan")],
)
def test_canonical_spelling(value: object, expected: str | None) -> None:
    assert canonical(value) == expected


def test_canonical_series_returns_the_declared_spelling_case_insensitively() -> None:
    out = canonical_series(pd.Series(["typical", " TYPICAL", None, "4.0", "other"]), ["Typical", "4"])
    assert out.tolist() == ["Typical", "Typical", None, "4", "other"]


def test_lookup_matches_exact_then_canonical_then_unambiguous_case() -> None:
    lookup = CategoryLookup(["1", "2", "Male", "a", "A"])
    assert lookup.code("1.0") == 0 and lookup.code(2.0) == 1 and lookup.code(" male ") == 2
    assert lookup.code("a") == 3 and lookup.code("A") == 4
    assert lookup.code("x") is None
    old = CategoryLookup(["1.0", "4"])  # a version trained before the rule keeps its slots
    assert old.code("1.0") == 0 and old.code("1") == 0 and old.code("4.0") == 1


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 200
    cp = rng.integers(1, 5, n)
    base = pd.DataFrame({"pid": [f"p{i}" for i in range(n)], "age": rng.normal(60, 10, n),
                         "cp": cp.astype(str), "event": (cp == 4).astype(int)})
    spelled = base.assign(cp=[f"{v}.0" for v in cp])  # the same rows as another site writes them
    return base, spelled


def test_sites_spelling_numbers_differently_share_one_vocabulary(tmp_path: Path) -> None:
    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, spelled = _frames()
    base.to_csv(tmp_path / "a.csv", index=False)
    spelled.to_csv(tmp_path / "b.csv", index=False)
    a, b = (load_hospital_table(tmp_path / f, contract) for f in ("a.csv", "b.csv"))
    assert b["cp"].tolist() == a["cp"].tolist()
    assert local_statistics(b, contract)["categorical"] == local_statistics(a, contract)["categorical"]
    # statistics of a frame that was not loaded through the contract canonicalise too
    assert set(local_statistics(spelled, contract)["categorical"]["cp"]) == {"1", "2", "3", "4"}
    dp = dp_table_statistics(spelled, contract, {"age": (0.0, 120.0)}, epsilon=50.0, delta=1e-5)
    assert set(dp["categorical"]["cp"]) <= {"1", "2", "3", "4"}


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_a_row_written_4_0_scores_as_the_row_written_4(tmp_path: Path, kind: str) -> None:
    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, spelled = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    assert encoder.vocabulary == (("1", "2", "3", "4"),)
    torch.manual_seed(0)
    save_package_files(tmp_path, build_model(kind, encoder.input_dim).eval(), encoder, kind, {})
    scorer = RiskScorer.from_files(tmp_path)
    features = ["age", "cp"]
    np.testing.assert_array_equal(encoder.encode(spelled[features]), encoder.encode(base[features]))
    np.testing.assert_array_equal(scorer.score_columns(spelled[features]), scorer.score_columns(base[features]))
    row = {"age": 60.0, "cp": "4"}
    assert scorer.score_one({"age": 60.0, "cp": " 4.0"}) == scorer.score_one(row)
    assert scorer.score_one({"age": 60.0, "cp": 4}) == scorer.score_one(row)
    np.testing.assert_array_equal(scorer.score_rows([{"age": 60.0, "cp": 4.0}]), scorer.score_rows([row]))
    assert scorer.unknown_counts(spelled[features]) == {}


def test_unknown_values_are_counted_per_column() -> None:
    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, _ = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    frame = pd.DataFrame({"age": [1.0] * 5, "cp": ["4.0", "9", "9", None, "asymptomatic"]})
    assert encoder.unknown_counts(frame) == {"cp": {"9": 2, "asymptomatic": 1}}
    other = encoder.encode(frame)[:, -1]  # the cp__other slot
    assert other.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]


def test_declared_categories_bound_the_vocabulary() -> None:
    contract = DataContract("pid", "event", ("age",), ("cp",), categories=(("cp", ("1", "2", "3")),))
    base, _ = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    assert encoder.vocabulary == (("1", "2", "3"),)


def test_unknown_values_at_serving_increment_the_counter_per_feature(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from platform_api.metrics import ApiMetrics
    from serving.loaded import LoadedModel

    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, _ = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    save_package_files(tmp_path, build_model("logistic", encoder.input_dim).eval(), encoder, "logistic", {})
    model = LoadedModel("m", "1", RiskScorer.from_files(tmp_path))
    rows = [{"age": 50.0, "cp": "4.0"}, {"age": 50.0, "cp": "9"}, {"age": 50.0, "cp": None}, {"age": 50.0, "cp": "x"}]
    assert model.unknown_categories(rows) == {"cp": 2}
    assert model.unknown_categories(rows[:1]) == {}
    metrics = ApiMetrics(process_metrics=False)
    metrics.observe_unknown_categories(model.unknown_categories(rows))
    metrics.observe_unknown_categories(model.unknown_categories(rows[:1]))
    assert 'bioverse_unknown_category_total{feature="cp"} 2.0' in generate_latest(metrics.registry).decode()


def test_a_hospital_logs_its_undeclared_values_with_every_count(hospital_files: list[Path], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from experiments.spec import parse_spec
    from federation.hospital import site_statistics
    from federation.site import Site
    from tests.conftest import spec_dict

    frame = pd.read_csv(hospital_files[0], dtype=str, keep_default_na=False)
    frame.loc[frame.index[:3], "smoking"] = "ex-smoker"
    frame.loc[frame.index[3:5], "smoking"] = "NEVER"  # declared, in another case
    frame.to_csv(hospital_files[0], index=False)
    spec = parse_spec(spec_dict(hospital_files[:2], data={"categories": {"smoking": ["never", "former", "current"]}},
                                privacy={"enabled": False}))
    site = Site("h1", hospital_files[0], 10.0, tmp_path / "ledger.json")
    with caplog.at_level(logging.WARNING, logger="federation.hospital"):
        stats = site_statistics(site, spec)["stats"]
    assert "NEVER" not in stats["categorical"]["smoking"] and "never" in stats["categorical"]["smoking"]
    warned = [r.getMessage() for r in caplog.records if "outside the declared list" in r.getMessage()]
    assert len(warned) == 1 and "h1: smoking" in warned[0] and "'ex-smoker' (" in warned[0]


def test_ray_serve_risk_predictor_counts_unknown_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from serving import risk
    from serving.loaded import LoadedModel

    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, _ = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    save_package_files(tmp_path, build_model("logistic", encoder.input_dim).eval(), encoder, "logistic", {})
    model = LoadedModel("m", "1", RiskScorer.from_files(tmp_path))
    counted: list[tuple[float, dict]] = []

    class Recorder:
        def __init__(self, name: str, **kwargs: object) -> None:
            assert name == "bioverse_unknown_category_total" and kwargs["tag_keys"] == ("feature",)

        def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
            counted.append((value, tags or {}))

    monkeypatch.setattr(risk.metrics, "Counter", Recorder)
    monkeypatch.setattr(risk, "AliasFollower", lambda *args, **kwargs: SimpleNamespace(model=model, poll_seconds=5.0))
    predictor = risk.RiskPredictor.func_or_class(f"sqlite:///{tmp_path / 'mlflow.db'}", "m")
    # serve.batch needs a replica; the batch method calls this with the batch's rows once scored
    predictor._count_unknown(model, [{"age": 50.0, "cp": "4.0"}, {"age": 50.0, "cp": "9"}, {"age": 50.0, "cp": "9"}])
    predictor._count_unknown(model, [{"age": 50.0, "cp": "4"}])
    assert counted == [(2, {"feature": "cp"})]


def test_bulk_scoring_counts_rows_with_unknown_categories(tmp_path: Path) -> None:
    import pyarrow as pa

    contract = DataContract("pid", "event", ("age",), ("cp",))
    base, _ = _frames()
    encoder = FeatureEncoder.from_statistics(local_statistics(base, contract), contract)
    save_package_files(tmp_path, build_model("logistic", encoder.input_dim).eval(), encoder, "logistic", {})
    scorer = RiskScorer.from_files(tmp_path)
    columns = {"age": pa.array([50.0, 60.0, None, 70.0]), "cp": pa.array(["4.0", "9", None, "9"]).dictionary_encode()}
    unknown: dict[str, int] = {}
    risk = scorer.score_columns(columns, unknown=unknown)
    assert unknown == {"cp": 2}
    np.testing.assert_array_equal(risk, scorer.score_columns(columns))
    assert risk[0] == pytest.approx(scorer.score_one({"age": 50.0, "cp": "4"}), abs=1e-6)
