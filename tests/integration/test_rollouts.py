"""Staged rollouts end to end: the real MLflow registry, the API scoring in process over Feast, SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from experiments.gate import mark_approved
from feature_store.repo import FeatureRepo
from serving.routing import route_bucket
from tests.integration.conftest import attach_report, clear_platform_caches, register_risk_models

pytestmark = pytest.mark.integration
MODEL = "rollout-risk"
FAST = {"min_requests": 5, "min_seconds": 0, "rollback_min_requests": 5}


def add_version(uri: str, hospital_files: list[Path], *, broken: bool = False, approve: bool = True) -> str:
    """Register one more logistic version (``broken``: NaN weights, so every risk it answers is
    refused) with a validation report, approved by the gate unless ``approve`` is False."""
    import torch
    from mlflow.tracking import MlflowClient

    from experiments.tracking import RunTracker, embedded_artifact_location
    from tests.conftest import make_spec
    from training.tabular.data import HospitalDataModule
    from training.tabular.hospital import model_hparams
    from training.tabular.local import train_locally
    from training.tabular.models import build_model
    from training.tabular.preprocessing import FeatureEncoder

    spec = make_spec(hospital_files, registered_model=MODEL)
    dm = HospitalDataModule(hospital_files[0], spec.data.contract, seed=1)
    dm.encoder = FeatureEncoder.from_statistics(dm.statistics(), spec.data.contract)
    model = build_model("logistic", dm.encoder.input_dim, **model_hparams(spec))
    train_locally(model, dm.dataset("train"), epochs=3, batch_size=64, dp=None, seed=7)
    if broken:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    tracker = RunTracker(uri, embedded_artifact_location(uri))
    tracker.start(spec)
    tracker.register(model=model, encoder=dm.encoder, kind="logistic", hparams=model_hparams(spec), model_name=MODEL, tags={})
    tracker.end()
    client = MlflowClient(uri, registry_uri=uri)
    version = str(max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'")))
    sha = attach_report(client, MODEL, version, {"auroc": 0.7}, "<p>report</p>")
    if approve:
        mark_approved(uri, MODEL, version, report_sha256=sha)
    return version


@pytest.fixture()
def platform(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Version 1 in production (approved, with a report), twins of 40 patients of tenant t1."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=1, production=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    mark_approved(uri, MODEL, "1", report_sha256=attach_report(client, MODEL, "1", {"auroc": 0.7}, "<p>v1</p>"))
    client.set_registered_model_alias(MODEL, "production", "1")
    frame = pd.read_csv(hospital_files[0])
    repo = FeatureRepo(tmp_path / "feature_repo").init()
    repo.ingest(frame, tenant_id="t1")
    repo.materialize()
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_FEATURE_REPO": str(repo.repo_dir),
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}", "BIOVERSE_TRACKING_URI": uri,
                       "BIOVERSE_API_MODEL_NAME": MODEL, "BIOVERSE_API_MODEL_POLL_SECONDS": "0.2",
                       "BIOVERSE_API_ROLLOUT_CONTROLLER_SECONDS": "0"}.items():  # the tests step by hand
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    with _api() as (http, keys):
        twins = [http.post("/v1/twins", json={"patient_id": p}, headers=_h(keys["app"])).json()["id"]
                 for p in frame["patient_id"][:40]]
        yield {"uri": uri, "files": hospital_files, "twins": twins, "http": http, "keys": keys, "tmp": tmp_path}
    clear_platform_caches()


class _api:
    """The API in process with an app key, a validator and an admin (keys kept across restarts)."""

    keys: dict[str, str] = {}

    def __enter__(self) -> tuple[TestClient, dict[str, str]]:
        from platform_api import db
        from platform_api.auth import create_key
        from platform_api.main import create_app

        self.http = TestClient(create_app())
        self.http.__enter__()
        if not self.keys:
            with db.session_factory()() as session:
                type(self).keys = {"app": create_key(session, role="app", tenant_id="t1"),
                                   "validator": create_key(session, role="clinical_validator", tenant_id=None, name="Dr Quinn"),
                                   "admin": create_key(session, role="admin", tenant_id=None, name="Root")}
        return self.http, self.keys

    def __exit__(self, *exc: object) -> None:
        self.http.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _fresh_keys() -> None:
    _api.keys = {}


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _predict(http: TestClient, keys: dict[str, str], twins: list[str]) -> list[dict[str, Any]]:
    answer = http.post("/v1/predictions/batch", json={"twin_ids": twins}, headers=_h(keys["app"]))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _flush() -> None:
    from platform_api.services import get_models

    assert get_models().split.stats is not None
    get_models().split.stats.flush()


def _audit_actions() -> list[tuple[str, str]]:
    from sqlalchemy import select

    from platform_api import db
    from platform_api.models import AuditEvent

    with db.session_factory()() as session:
        return [(a, o) for a, o in session.execute(select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.id))
                if "rollout" in a]


def test_only_approved_versions_roll_out_and_one_at_a_time(platform: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    uri, http, keys = platform["uri"], platform["http"], platform["keys"]
    client = MlflowClient(uri, registry_uri=uri)
    pending = add_version(uri, platform["files"], approve=False)
    rejected = add_version(uri, platform["files"], approve=False)
    client.set_model_version_tag(MODEL, rejected, "review_status", "rejected")
    by_hand = add_version(uri, platform["files"], approve=False)
    client.set_model_version_tag(MODEL, by_hand, "review_status", "approved")  # no gate signature: self-approved
    for version in (pending, rejected, by_hand):
        refused = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": version}, headers=_h(keys["validator"]))
        assert refused.status_code == 409 and "rolled out" in refused.json()["detail"], refused.text
        assert "rollout.state" not in (client.get_registered_model(MODEL).tags or {})  # nothing written
    assert _audit_actions() == [(f"registry.rollout.start {MODEL}/{v}", "notapproved") for v in (pending, rejected, by_hand)]
    bad = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": "2", "config": {"steps": [50, 10]}},
                    headers=_h(keys["validator"]))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "steps"
    assert http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": "2"}, headers=_h(keys["app"])).status_code == 403

    good = add_version(uri, platform["files"])
    started = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": good}, headers=_h(keys["validator"]))
    assert started.status_code == 201 and started.json()["state"] == "running" and started.json()["share"] == 10
    other = add_version(uri, platform["files"])
    second = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": other}, headers=_h(keys["validator"]))
    assert second.status_code == 409 and "already has a running rollout" in second.json()["detail"]
    assert http.post(f"/v1/registry/models/{MODEL}/rollout/resume", headers=_h(keys["admin"])).status_code == 409
    assert http.post(f"/v1/registry/models/{MODEL}/rollout/pause", headers=_h(keys["admin"])).json()["state"] == "paused"
    assert http.post(f"/v1/registry/models/{MODEL}/rollout/abort", headers=_h(keys["validator"])).json()["state"] == "aborted"
    assert _audit_actions()[3:] == [
        (f"registry.rollout.start {MODEL}/{good}", "ok"), (f"registry.rollout.start {MODEL}/{other}", "rolloutconflict"),
        (f"registry.rollout.resume {MODEL}/{good}", "rollouterror"), (f"registry.rollout.pause {MODEL}/{good}", "ok"),
        (f"registry.rollout.abort {MODEL}/{good}", "ok")]

    # the review page's section: the last rollout, and a validator's start / pause buttons
    assert http.post("/review/login", data={"api_key": keys["validator"]}, follow_redirects=False).status_code == 303
    page = http.get(f"/review/{MODEL}/{good}").text
    assert "Staged rollout" in page and "aborted" in page and 'value="start"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    started = http.post(f"/review/{MODEL}/{good}/rollout", data={"action": "start", "csrf": csrf}, follow_redirects=False)
    assert started.status_code == 303 and "running" in unquote(started.headers["location"])
    page = http.get(f"/review/{MODEL}/{good}").text
    assert 'value="pause"' in page and 'value="start"' not in page and "1/3 (10%)" in page
    forged = http.post(f"/review/{MODEL}/{good}/rollout", data={"action": "abort", "csrf": "x" * 64}, follow_redirects=False)
    assert "/review/login" in forged.headers["location"]  # no CSRF token, no action
    assert http.get(f"/v1/registry/models/{MODEL}/rollout", headers=_h(keys["admin"])).json()["state"] == "running"


def test_a_failing_candidate_is_rolled_back_and_no_request_fails(platform: dict[str, Any]) -> None:
    from platform_api.rollouts import rollouts_at
    from platform_api.settings import get_settings

    http, keys, twins = platform["http"], platform["keys"], platform["twins"]
    broken = add_version(platform["uri"], platform["files"], broken=True)
    started = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": broken, "config": {"steps": [50, 100], **FAST}},
                        headers=_h(keys["validator"]))
    assert started.status_code == 201, started.text
    time.sleep(0.3)  # past the API's poll: it reads the rollout
    answers = [p for _ in range(3) for p in _predict(http, keys, twins)]
    assert {p["model_version"] for p in answers} == {"1"}  # the candidate's answers were refused; production answered
    _flush()
    settings = get_settings()
    service = rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())
    status = service.status(MODEL)
    assert status.candidate.errors == status.candidate.requests > 0 and status.verdict.action == "rollback"
    from platform_api import db

    with db.session_factory()() as session:
        assert service.step(session, MODEL).state.state == "rolled_back"
    assert _audit_actions()[-1] == (f"registry.rollout.rollback {MODEL}/{broken}", "ok")
    time.sleep(0.3)
    assert {p["model_version"] for p in _predict(http, keys, twins)} == {"1"}


def test_rollout_to_100_under_load_survives_an_api_restart(platform: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from platform_api import db
    from platform_api.rollouts import rollouts_at
    from platform_api.settings import get_settings

    http, keys, twins = platform["http"], platform["keys"], platform["twins"]
    candidate = add_version(platform["uri"], platform["files"])
    # a first step of 25%, and the load over all 40 twins: with 10% and 20 twins, a rollout id
    # that sends none of them to the candidate (0.9^20: 12% of runs) left the first step without
    # candidate requests, and the step never advanced
    config = {"steps": [25, 50, 100], **FAST, "max_shift_psi": 50, "max_latency_ratio": 1000}
    started = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": candidate, "config": config},
                        headers=_h(keys["validator"]))
    assert started.status_code == 201, started.text
    settings = get_settings()
    service = rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())
    failures: list[str] = []
    seen: list[tuple[int, dict[str, Any]]] = []
    stop = threading.Event()

    def load(client: TestClient) -> None:
        for _ in range(2000):  # bounded
            if stop.is_set():
                return
            answer = client.post("/v1/predictions/batch", json={"twin_ids": twins}, headers=_h(keys["app"]))
            if answer.status_code != 201:
                failures.append(f"{answer.status_code} {answer.text[:200]}")
            else:
                seen.extend((time.monotonic_ns(), p) for p in answer.json())

    loader = threading.Thread(target=load, args=(http,), daemon=True)
    loader.start()
    try:
        for _ in range(600):  # bounded: steps of 0.5 s
            time.sleep(0.5)
            _flush()
            with db.session_factory()() as session:
                state = service.step(session, MODEL).state
            if state.step >= 1 or state.state != "running":
                break
        assert state.state == "running" and state.step == 1, state
    finally:
        stop.set()
        loader.join(timeout=120)
    # the API process restarts mid-rollout: the same step, the same share, its counts kept
    _flush()
    before = service.status(MODEL)
    clear_platform_caches()
    with _api() as (http2, keys2):
        after = service.status(MODEL)
        assert (after.state.id, after.state.step, after.state.share) == (before.state.id, 1, 50)
        assert after.current.requests == before.current.requests
        answers = _predict(http2, keys2, twins)
        for p in answers:
            assert p["model_version"] == (candidate if route_bucket(after.state.id, p["twin_id"]) < 50 else "1")
        stop.clear()
        loader = threading.Thread(target=load, args=(http2,), daemon=True)
        loader.start()
        try:
            for _ in range(600):
                time.sleep(0.5)
                from platform_api.services import get_models

                get_models().split.stats.flush()
                with db.session_factory()() as session:
                    state = service.step(session, MODEL).state
                if state.state != "running":
                    break
        finally:
            stop.set()
            loader.join(timeout=120)
        assert state.state == "complete", state
        assert str(MlflowClient(platform["uri"], registry_uri=platform["uri"]).get_model_version_by_alias(MODEL, "production").version) == candidate
        time.sleep(0.5)
        assert {p["model_version"] for p in _predict(http2, keys2, twins)} == {candidate}
    assert failures == []
    assert seen and {p["model_version"] for _, p in seen} <= {"1", candidate}
    steps = [a for a, o in _audit_actions() if o == "ok"]
    assert steps == [f"registry.rollout.{a} {MODEL}/{candidate}" for a in ("start", "advance", "advance", "complete")]


def test_the_api_process_runs_the_controller(platform: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """No watcher and no step by hand: the API's own controller rolls a failing candidate back,
    then takes a good one through its steps to production, each move audited as the controller."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy import select

    from experiments.rollout import RolloutRegistry
    from platform_api import db
    from platform_api.models import AuditEvent

    monkeypatch.setenv("BIOVERSE_API_ROLLOUT_CONTROLLER_SECONDS", "0.2")
    clear_platform_caches()
    registry = RolloutRegistry(platform["uri"])
    twins = platform["twins"]

    def load_until_done(http: TestClient, keys: dict[str, str]) -> str:
        for _ in range(300):  # bounded: a batch of 40 twins, then a look at the rollout
            _predict(http, keys, twins)
            state = registry.rollout(MODEL)
            if state.state != "running":
                return state.state
            time.sleep(0.1)
        return state.state

    with _api() as (http, keys):
        broken = add_version(platform["uri"], platform["files"], broken=True)
        config = {"steps": [50, 100], **FAST}
        assert http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": broken, "config": config},
                         headers=_h(keys["validator"])).status_code == 201
        time.sleep(0.3)  # past the API's poll
        assert load_until_done(http, keys) == "rolled_back"
        good = add_version(platform["uri"], platform["files"])
        config |= {"max_shift_psi": 50, "max_latency_ratio": 1000}
        assert http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": good, "config": config},
                         headers=_h(keys["validator"])).status_code == 201
        assert load_until_done(http, keys) == "complete"
    client = MlflowClient(platform["uri"], registry_uri=platform["uri"])
    assert str(client.get_model_version_by_alias(MODEL, "production").version) == good
    with db.session_factory()() as session:
        moves = [(a, actor) for a, actor, o in session.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.outcome)
                 .order_by(AuditEvent.id)) if "rollout" in a and o == "ok" and ".start " not in a]
    assert moves == [(f"registry.rollout.rollback {MODEL}/{broken}", "rollout-controller"),
                     (f"registry.rollout.advance {MODEL}/{good}", "rollout-controller"),
                     (f"registry.rollout.complete {MODEL}/{good}", "rollout-controller")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_starts_at_once_one_wins(backend: str, hospital_files: list[Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    from experiments.rollout import RolloutConflict, RolloutRegistry
    from experiments.rollout_rules import RolloutConfig
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.rollouts import RolloutService

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=1, production=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    mark_approved(uri, MODEL, "1", report_sha256=attach_report(client, MODEL, "1", {"auroc": 0.7}, "<p>v1</p>"))
    client.set_registered_model_alias(MODEL, "production", "1")
    versions = [add_version(uri, hospital_files), add_version(uri, hospital_files)]
    url = (request.getfixturevalue("postgres_database").sqlalchemy_url if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'platform.db'}")
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", url)
    clear_platform_caches()
    db.migrate(url)
    with db.session_factory(url)() as session:
        from platform_api.auth import authenticate

        caller = authenticate(session, create_key(session, role="clinical_validator", tenant_id=None, name="Dr Lee"))
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def start(version: str) -> None:
        service = RolloutService(RolloutRegistry(uri), db.get_engine(url))
        barrier.wait(timeout=60)
        with db.session_factory(url)() as session:
            try:
                service.start(session, caller, MODEL, version, RolloutConfig())
                outcomes.append("started")
            except RolloutConflict:
                outcomes.append("conflict")

    threads = [threading.Thread(target=start, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(outcomes) == ["conflict", "started"]
    assert RolloutRegistry(uri).rollout(MODEL).state == "running"
    clear_platform_caches()


def test_shadow_step_scores_every_request_and_returns_none_of_its_answers(platform: dict[str, Any]) -> None:
    from platform_api import db
    from platform_api.rollouts import rollouts_at
    from platform_api.settings import get_settings

    http, keys, twins = platform["http"], platform["keys"], platform["twins"]
    candidate = add_version(platform["uri"], platform["files"])
    config = {"steps": [100], "shadow": True, **FAST, "max_shift_psi": 50, "max_latency_ratio": 1000}
    started = http.post(f"/v1/registry/models/{MODEL}/rollout", json={"version": candidate, "config": config},
                        headers=_h(keys["validator"])).json()
    assert started["shadow"] and started["share"] == 0 and started["step"] == "shadow"
    time.sleep(0.3)  # past the API's poll
    answers = [p for _ in range(2) for p in _predict(http, keys, twins)]
    assert {p["model_version"] for p in answers} == {"1"}  # the shadow's answers are never returned
    _flush()
    settings = get_settings()
    service = rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())
    status = service.status(MODEL)
    assert status.candidate.requests == status.current.requests == len(answers)  # it scored every request
    with db.session_factory()() as session:
        moved = service.step(session, MODEL).state
    assert (moved.step, moved.share, moved.shadow) == (0, 100, False)
