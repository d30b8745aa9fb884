"""`bioverse score`: every twin's current offline features through the registered model, for real.

A real embedded MLflow registry, real Feast repos (ingest, push) and the real CLI; the
expected values come from the registered model itself (RiskScorer and the MLflow pyfunc)
and from a plain pandas point-in-time join of the same offline files.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from feature_store.definitions import VIEWS, build_definitions
from feature_store.offline import read_current_features
from feature_store.repo import FeatureRepo
from serving.bulk import score_offline_store
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel
from tests.integration.conftest import register_risk_models
from training.tabular.scoring import RiskScorer

pytestmark = pytest.mark.integration
MODEL = "bulk-risk"
KEYS = ["tenant_id", "patient_id"]
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict[str, Any]:
    """A registered risk model, production on version 1, and its scorer."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('bulk') / 'mlflow.db'}"
    register_risk_models(uri, MODEL, sorted(hospitals_dir.glob("hospital-*.csv")), versions=1)
    return {"uri": uri, "scorer": RegistryModel(uri, MODEL).load_current(LoadedModel).scorer}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict[str, Any]:
    """A Feast repo holding two hospitals (tenants t1, t2), never changed by a test."""
    repo = FeatureRepo(tmp_path_factory.mktemp("bulk-store") / "repo").init()
    frames = {}
    for tenant, path in zip(("t1", "t2"), sorted(hospitals_dir.glob("hospital-*.csv"))[:2], strict=True):
        frames[tenant] = pd.read_csv(path)
        repo.ingest(frames[tenant], tenant_id=tenant, observed_at=NOW - timedelta(hours=1))
    return {"repo": repo, "frames": frames}


def _score(registry: dict[str, Any], repo: FeatureRepo, out: Path, **options: Any) -> pd.DataFrame:
    result = score_offline_store(tracking_uri=registry["uri"], model=MODEL, feature_repo=repo.repo_dir, output=out, **options)
    scores = pq.read_table(out).to_pandas()
    assert result.rows == len(scores) and result.model_version == "1" and result.predictions_per_second > 0
    assert set(result.seconds) == {"model", "read", "join", "score", "write"}
    return scores


def _same_risk(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding: OpenBLAS may sum a dot product in another order when an
    array starts at another alignment, so two runs of one scorer can differ in the last bit."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)


def _stored(frame: pd.DataFrame, scorer: RiskScorer) -> pd.DataFrame:
    """A hospital's rows as the offline store holds them (float32 numbers, strings)."""
    stored = frame[["patient_id", *scorer.features]].copy()
    for column in scorer.encoder.numeric:
        stored[column] = stored[column].astype("float32")
    return stored


def test_scores_every_twin_as_the_registered_model_does(registry: dict[str, Any], store: dict[str, Any],
                                                        tmp_path: Path) -> None:
    scorer: RiskScorer = registry["scorer"]
    scores = _score(registry, store["repo"], tmp_path / "out" / "scores.parquet")
    assert list(scores.columns) == ["tenant_id", "patient_id", "risk", "decision", "model_name", "model_version", "scored_at"]
    assert str(scores["scored_at"].dtype) == "datetime64[us, UTC]" and scores["scored_at"].nunique() == 1
    assert set(scores["model_name"]) == {MODEL} and set(scores["model_version"]) == {"1"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scores.parquet"]  # no temporary file left
    assert not scores.duplicated(KEYS).any()

    for tenant, frame in store["frames"].items():
        mine = scores[scores["tenant_id"] == tenant].set_index("patient_id")
        assert sorted(mine.index) == sorted(frame["patient_id"])
        stored = _stored(frame, scorer)
        expected = scorer.score_columns(stored)  # the same rows through RiskScorer
        _same_risk(mine.loc[stored["patient_id"], "risk"].to_numpy(), expected)

    # the registered pyfunc (what a user would load) agrees to 1e-6
    mlflow.set_tracking_uri(registry["uri"])
    mlflow.set_registry_uri(registry["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    twins = read_current_features(store["repo"].repo_dir, scorer.features).to_pandas().iloc[::97]
    inputs = twins[list(scorer.features)].astype(dict.fromkeys(scorer.encoder.numeric, "float64"))
    merged = twins[KEYS].merge(scores, on=KEYS)
    np.testing.assert_allclose(merged["risk"], pyfunc.predict(inputs)["risk"], atol=1e-6)


def test_tenant_option_scores_one_tenant(registry: dict[str, Any], store: dict[str, Any], tmp_path: Path) -> None:
    everyone = _score(registry, store["repo"], tmp_path / "all.parquet")
    one = _score(registry, store["repo"], tmp_path / "t2.parquet", tenant="t2")
    assert set(one["tenant_id"]) == {"t2"} and len(one) == len(store["frames"]["t2"])
    expected = everyone[everyone["tenant_id"] == "t2"].set_index("patient_id")["risk"]
    _same_risk(one.set_index("patient_id")["risk"], expected.loc[one["patient_id"]])


def test_each_twin_is_scored_on_its_latest_values(registry: dict[str, Any], hospital_files: list[Path],
                                                  tmp_path: Path) -> None:
    scorer: RiskScorer = registry["scorer"]
    frame = pd.read_csv(hospital_files[0])
    repo = FeatureRepo(tmp_path / "repo").init()
    repo.ingest(frame, tenant_id="t1", observed_at=NOW - timedelta(days=2))
    repo.materialize()
    before = _score(registry, repo, tmp_path / "before.parquet").set_index("patient_id")["risk"]

    pushed, older, newer, future = (frame.iloc[i] for i in (3, 5, 8, 13))
    repo.push(tenant_id="t1", patient_id=pushed["patient_id"], values={"systolic_bp": 211.0, "glucose": 301.0},
              observed_at=NOW - timedelta(hours=1))  # vitals and labs rows, put first in the files by Feast
    changed = frame[frame["patient_id"] == newer["patient_id"]].assign(age=93, smoking="current", systolic_bp=97.0)
    repo.ingest(changed, tenant_id="t1", observed_at=NOW - timedelta(days=1))  # appended: the newer row wins
    repo.ingest(frame[frame["patient_id"] == older["patient_id"]].assign(age=18), tenant_id="t1",
                observed_at=NOW - timedelta(days=30))  # an older row loses
    repo.ingest(frame[frame["patient_id"] == future["patient_id"]].assign(age=18), tenant_id="t1",
                observed_at=NOW + timedelta(days=1))  # not observed yet at scoring time
    after = _score(registry, repo, tmp_path / "after.parquet").set_index("patient_id")["risk"]

    assert len(after) == len(frame)  # still one score per twin
    stored = _stored(frame, scorer).set_index("patient_id")
    expect = {}
    row = stored.loc[pushed["patient_id"]].to_dict()
    online = repo.online_features("t1", [pushed["patient_id"]])[0]  # the push kept the views' other current values
    row.update(systolic_bp=211.0, glucose=301.0, heart_rate=online["heart_rate"], bmi=online["bmi"],
               cholesterol=online["cholesterol"])
    expect[pushed["patient_id"]] = row
    expect[newer["patient_id"]] = {**stored.loc[newer["patient_id"]].to_dict(), "age": 93.0, "smoking": "current",
                                   "systolic_bp": 97.0}
    for patient, features in expect.items():
        features = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in features.items()}
        assert after[patient] == pytest.approx(scorer.score_rows([features])[0], abs=1e-6), patient
        assert after[patient] != before[patient]
    unchanged = after.index.difference(list(expect))
    _same_risk(after[unchanged].to_numpy(), before[unchanged].to_numpy())


def _reference_join(data_dir: Path, features: tuple[str, ...], as_of: datetime) -> pd.DataFrame:
    """The point-in-time rules in plain pandas: per view the newest current row, outer-joined."""
    ttl = {view: build_definitions(data_dir)[view].ttl for view in VIEWS}
    merged = None
    for view, columns in VIEWS.items():
        rows = pd.read_parquet(data_dir / f"{view}.parquet").reset_index(names="row")
        when = pd.Timestamp(as_of)
        rows = rows[(rows["event_timestamp"] <= when) & (rows["event_timestamp"] >= when - ttl[view])]
        rows = rows.sort_values(["event_timestamp", "created", "row"]).groupby(KEYS).tail(1)
        rows = rows[KEYS + [c for c in columns if c in features]]
        merged = rows if merged is None else merged.merge(rows, on=KEYS, how="outer")
    assert merged is not None
    return merged.sort_values(KEYS).reset_index(drop=True)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_history_matches_a_plain_point_in_time_join(registry: dict[str, Any], tmp_path: Path, order: str) -> None:
    """Re-ingests, expired and future rows, pushes, the same ids in two tenants; patient ids
    sorted (twins numbered without hashing, history matched) or not (everything hashed)."""
    rng = np.random.default_rng(7)
    scorer: RiskScorer = registry["scorer"]

    def patients(ids: list[str]) -> pd.DataFrame:
        n = len(ids)
        return pd.DataFrame({"patient_id": ids, "age": rng.integers(20, 90, n).astype(float),
                             "sex": rng.choice(["F", "M", None], n), "smoking": rng.choice(["never", "former", "current", None], n),
                             "systolic_bp": np.where(rng.random(n) < 0.2, np.nan, rng.normal(130, 15, n).round()),
                             "heart_rate": rng.normal(72, 9, n).round(), "bmi": rng.normal(27, 4, n).round(1),
                             "cholesterol": rng.normal(5, 1, n).round(2), "glucose": rng.normal(100, 20, n).round()})

    ids = [f"p{i:04d}" for i in (range(300) if order == "sorted" else rng.permutation(300))]
    repo = FeatureRepo(tmp_path / "repo").init()
    days = functools.partial(timedelta, days=1)
    repo.ingest(patients(ids), tenant_id="t1", observed_at=NOW - 5 * days())
    repo.ingest(patients(ids[50:250]), tenant_id="t2", observed_at=NOW - 5 * days())  # same ids, other tenant
    repo.ingest(patients(list(rng.choice(ids, 60, replace=False))), tenant_id="t1", observed_at=NOW - 2 * days())
    repo.ingest(patients(list(rng.choice(ids, 40, replace=False))), tenant_id="t2", observed_at=NOW - 9 * days())
    repo.ingest(patients(list(rng.choice(ids, 30, replace=False))), tenant_id="t1", observed_at=NOW + 1 * days())
    repo.ingest(patients(["n001", "n002"]), tenant_id="t2", observed_at=NOW - 400 * days())  # only demographics current
    repo.ingest(patients(["gone"]), tenant_id="t2", observed_at=NOW - 4000 * days())  # nothing current: no twin
    for patient in rng.choice(ids, 5, replace=False):
        repo.push(tenant_id="t1", patient_id=str(patient), values={"heart_rate": float(rng.integers(50, 120))},
                  observed_at=NOW - timedelta(hours=3))

    as_of = datetime.now(UTC)
    expected = _reference_join(repo.data_dir, scorer.features, as_of)
    got = read_current_features(repo.repo_dir, scorer.features, as_of=as_of).to_pandas().sort_values(KEYS).reset_index(drop=True)
    assert len(got) > 500 and "gone" not in set(got["patient_id"])
    assert got[got["patient_id"] == "n001"]["systolic_bp"].isna().all()  # its vitals expired, its demographics did not
    pd.testing.assert_frame_equal(got[KEYS], expected[KEYS])
    for column in scorer.features:
        left, right = got[column], expected[column]
        assert (left.isna() == right.isna()).all(), column
        if column in scorer.encoder.numeric:
            np.testing.assert_array_equal(left[left.notna()].to_numpy(float), right[right.notna()].to_numpy(float))
        else:
            assert (left[left.notna()].astype(str) == right[right.notna()].astype(str)).all(), column
    # and the scores are the model's on those rows
    scores = _score(registry, repo, tmp_path / "scores.parquet", as_of=as_of).sort_values(KEYS).reset_index(drop=True)
    _same_risk(scores["risk"].to_numpy(), scorer.score_columns(expected[list(scorer.features)]))


def test_encode_columns_equals_the_encoder_for_every_input_kind(registry: dict[str, Any]) -> None:
    import pyarrow as pa

    scorer: RiskScorer = registry["scorer"]
    frame = pd.DataFrame({c: [1.5, None, 3.0, -2.0, 250.0, 0.0] for c in scorer.encoder.numeric})
    for column, vocabulary in zip(scorer.encoder.categorical, scorer.encoder.vocabulary, strict=True):
        frame[column] = pd.Series([vocabulary[0], None, "never-seen", vocabulary[-1], np.nan, vocabulary[0]], dtype=object)
    expected = scorer.encoder.encode(frame)
    kinds = {
        "object": frame,
        "string": frame.astype(dict.fromkeys(scorer.encoder.categorical, "string")),
        "category": frame.astype(dict.fromkeys(scorer.encoder.categorical, "category")),
        "arrow": {c: pa.array(frame[c], from_pandas=True) for c in frame.columns},
        "arrow dictionary": {c: pa.chunked_array([pa.array(frame[c][:3], from_pandas=True).dictionary_encode(),
                                                  pa.array(frame[c][3:], from_pandas=True).dictionary_encode()])
                             if c in scorer.encoder.categorical else pa.array(frame[c], pa.float32(), from_pandas=True)
                             for c in frame.columns},
        "numpy": {c: frame[c].to_numpy() for c in frame.columns},
    }
    for kind, columns in kinds.items():
        np.testing.assert_array_equal(scorer.encode_columns(columns), expected, err_msg=kind)


runner = CliRunner()


def _one_error_line(result: Any) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_cli_scores_and_reports_user_errors_in_one_line(registry: dict[str, Any], store: dict[str, Any],
                                                        tmp_path: Path) -> None:
    from platform_api.cli import app

    common = ["score", "--tracking-uri", registry["uri"], "--output", str(tmp_path / "cli.parquet")]
    done = runner.invoke(app, [*common, "--model", MODEL, "--feature-repo", str(store["repo"].repo_dir)])
    assert done.exit_code == 0, done.output
    total = sum(len(f) for f in store["frames"].values())
    assert f"scored {total:,} twins with {MODEL} version 1" in done.output and "predictions/s" in done.output
    assert pq.read_metadata(tmp_path / "cli.parquet").num_rows == total

    line = _one_error_line(runner.invoke(app, [*common, "--model", "no-such-model", "--feature-repo", str(store["repo"].repo_dir)]))
    assert "no version of model 'no-such-model' has the alias 'production'" in line
    line = _one_error_line(runner.invoke(app, [*common, "--model", MODEL, "--alias", "staging",
                                               "--feature-repo", str(store["repo"].repo_dir)]))
    assert "alias 'staging'" in line
    line = _one_error_line(runner.invoke(app, [*common, "--model", MODEL, "--feature-repo", str(tmp_path / "nowhere")]))
    assert "no Feast repo here" in line
    line = _one_error_line(runner.invoke(app, [*common, "--model", MODEL, "--feature-repo", str(store["repo"].repo_dir),
                                               "--tenant", "t9"]))
    assert "no current features of tenant 't9'" in line
    empty = FeatureRepo(tmp_path / "empty").init()
    line = _one_error_line(runner.invoke(app, [*common, "--model", MODEL, "--feature-repo", str(empty.repo_dir)]))
    assert "holds no current features" in line
