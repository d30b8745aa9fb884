"""A real Prometheus scrapes a real platform API (its metrics token) and evaluates deploy/monitoring's rules,
rendered with short ``for:`` durations and range windows: drift, a nearly spent budget, 5xx answers, a tampered
audit chain and a stopped API each fire their alert; the dashboard's expressions parse and select real metrics."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from federation.processes import free_port
from tests.integration.conftest import clear_platform_caches
from tests.integration.test_alert_rules import (
    RAY_METRICS,
    alerts_and_records,
    dashboard_expressions,
    load_rules,
    metric_names,
    require_prometheus,
)
from tests.integration.test_monitoring import MODEL, served  # noqa: F401 - the fixture: two versions with references

pytestmark = pytest.mark.integration

TOKEN = "prometheus-scrape-token"
KEY_HEX = "cd" * 32


def render_rules(rules: dict[str, Any], *, hold: str = "2s", window: str = "15s") -> dict[str, Any]:
    """The rules with every ``for:`` at ``hold`` (0 stays 0) and every range at ``window``: a test's seconds, not minutes."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{window}]", str(rule["expr"]))
            if "for" in rule and str(rule["for"]) not in ("0", "0s", "0m"):
                rule["for"] = hold
    return rules


def _config(api: str, rules: Path) -> dict[str, Any]:
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "bioverse-api", "metrics_path": "/metrics",
                                "authorization": {"type": "Bearer", "credentials": TOKEN},
                                "static_configs": [{"targets": [api]}]}]}


@pytest.fixture()
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The API on a real port (checks every second), a Redis that does not answer (its /readyz fails), and Prometheus."""
    import uvicorn

    dead_redis = free_port()  # nothing listens there
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_TRACKING_URI": served["uri"], "BIOVERSE_API_MODEL_NAME": MODEL,
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}", "BIOVERSE_API_METRICS_TOKEN": TOKEN,
                       "BIOVERSE_API_AUDIT_VERIFY_SECONDS": "1", "BIOVERSE_API_PRIVACY_REFRESH_SECONDS": "1",
                       "BIOVERSE_API_CACHE_URL": f"redis://127.0.0.1:{dead_redis}/0", "BIOVERSE_AUDIT_KEY": KEY_HEX,
                       "BIOVERSE_API_MONITOR_WINDOW": "1000", "BIOVERSE_API_MONITOR_MIN_PREDICTIONS": "200",
                       "BIOVERSE_API_MONITOR_REFRESH_SECONDS": "5", "BIOVERSE_API_MONITOR_PSI_THRESHOLD": "0.2"}.items():
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    from platform_api.db import migrate
    from platform_api.main import create_app

    migrate(f"sqlite:///{tmp_path / 'platform.db'}")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    _wait("the API answers", lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(render_rules(load_rules())))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(f"127.0.0.1:{port}", rules)))
    prom_port = free_port()
    prometheus = subprocess.Popen([require_prometheus("prometheus"), f"--config.file={config}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    try:
        yield {"base": base, "prometheus": f"http://127.0.0.1:{prom_port}", "server": server,
               "thread": thread, "tmp": tmp_path, "served": served}
    finally:
        server.should_exit = True
        thread.join(10)
        prometheus.terminate()
        try:
            prometheus.wait(10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
        clear_platform_caches()


def _record_drift(versions: dict[str, Any]) -> None:
    """1,000 predictions of version 1, half with ``sex`` spelt a site's own way (drift, as test_monitoring provokes it)."""
    import math

    from platform_api.db import session_factory
    from platform_api.models import Prediction, Tenant, Twin

    window = versions["window"].iloc[:1000].reset_index(drop=True)
    window.loc[window.index[500:], "sex"] = window["sex"].iloc[500:].map({"F": "female", "M": "male"}).to_numpy()
    with session_factory()() as session:
        session.add(Tenant(id="t1", name="t1"))
        twin = Twin(tenant_id="t1", patient_id=f"p-{uuid.uuid4().hex[:12]}")
        session.add(twin)
        session.flush()
        for row in window[versions["features"]].to_dict("records"):
            inputs = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            session.add(Prediction(twin_id=twin.id, tenant_id="t1", model_name=MODEL, model_version="1", risk=0.2, inputs=inputs))
        session.commit()


def _log_budgets(uri: str) -> None:
    """A finished federated run as the coordinator logs it: per hospital, the epsilon spent and the budget left."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"budget-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment).info.run_id
    for key, value in {"north/train_epsilon": 3.0, "north/train_budget_left": 4.0, "north/evaluate_selection_epsilon": 0.5,
                       "north/evaluate_budget_left": 2.5, "south/train_epsilon": 1.0, "south/train_budget_left": 8.0}.items():
        client.log_metric(run, key, value)
    client.set_terminated(run)


def _append_audit_events(n: int) -> None:
    from sqlalchemy.orm import Session

    from platform_api.audit import audited
    from platform_api.auth import Principal
    from platform_api.db import get_engine

    with Session(get_engine()) as session:
        for _ in range(n):
            with audited(session, Principal("k1", "app", "t1"), "twin.read", "p1"):
                pass


def _tamper_audit() -> None:
    """What a writer with DDL rights does (test_audit_tamper): drop the append-only triggers, rewrite an event."""
    from sqlalchemy import text

    from platform_api.db import get_engine

    with get_engine().begin() as connection:
        for statement in ("DROP TRIGGER audit_no_update", "DROP TRIGGER audit_no_delete", "DROP TRIGGER audit_no_overwrite",
                          "UPDATE audit_events SET patient_id = 'p2' WHERE id = 2"):
            connection.execute(text(statement))


def _firing(prometheus: str) -> dict[str, list[dict[str, str]]]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    found: dict[str, list[dict[str, str]]] = {}
    for alert in alerts:
        if alert["state"] == "firing":
            found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    return found


def _wait(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds:g} s: {what}")


def _query(prometheus: str, expr: str) -> httpx.Response:
    return httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)


def test_alerts_fire_against_a_real_prometheus_scraping_the_api(platform: dict[str, Any]) -> None:
    prom, base = platform["prometheus"], platform["base"]
    _record_drift(platform["served"])
    _log_budgets(platform["served"]["uri"])
    _append_audit_events(5)
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 401  # no token, no metrics
    exported = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text

    # Drift and the north hospital's budget (2.5 left, its run spent 3.5) fire; south's (8 left) and an intact chain do not.
    def calm_alerts_fire() -> bool:
        firing = _firing(prom)
        return "BioVerseModelDrift" in firing and "BioVersePrivacyBudgetNearlySpent" in firing
    _wait("drift and budget alerts fire", calm_alerts_fire, 60)
    firing = _firing(prom)
    assert [(a["model_name"], a["model_version"]) for a in firing["BioVerseModelDrift"]] == [(MODEL, "1")]
    assert [a["hospital"] for a in firing["BioVersePrivacyBudgetNearlySpent"]] == ["north"]
    ok = _query(prom, "bioverse_audit_verify_ok").json()["data"]["result"]
    assert [r["value"][1] for r in ok] == ["1"]
    assert {"BioVerseAuditChainBroken", "BioVerseApiHighErrorRate"}.isdisjoint(firing)
    budget = _query(prom, "bioverse_privacy_budget_left_epsilon").json()["data"]["result"]
    assert {r["metric"]["hospital"]: float(r["value"][1]) for r in budget} == {"north": 2.5, "south": 8.0}

    # The dashboard's expressions parse (a parse error answers 400) and select what the API, the rules or Ray export.
    _, records = alerts_and_records(load_rules())
    scraped = set(httpx.get(f"{prom}/api/v1/label/__name__/values", timeout=5).json()["data"])
    suffixes = {"histogram": ("_count", "_sum", "_bucket"), "counter": ("", "_total")}  # a counter's TYPE may carry _total
    declared = {name + suffix for name, kind in re.findall(r"^# TYPE (\S+) (\w+)", exported, re.M)
                for suffix in suffixes.get(kind, ("",))}
    for expr in dashboard_expressions():
        answer = _query(prom, expr.replace("$job", "bioverse-api"))
        assert answer.status_code == 200, (expr, answer.text)
        assert metric_names(expr) <= scraped | declared | records | set(RAY_METRICS), expr

    # 5xx answers (the cache does not answer: /readyz is 503), then a rewritten audit event.
    def failing_requests_fire() -> bool:  # a 503 every check: the 15 s window never empties while Prometheus catches up
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
        return "BioVerseApiHighErrorRate" in _firing(prom)
    _wait("the error-rate alert fires", failing_requests_fire, 45)
    _tamper_audit()
    _wait("the audit alert fires", lambda: "BioVerseAuditChainBroken" in _firing(prom), 30)
    assert [a["job"] for a in _firing(prom)["BioVerseAuditChainBroken"]] == ["bioverse-api"]

    # The API goes away.
    platform["server"].should_exit = True
    platform["thread"].join(10)
    _wait("the API-down alert fires", lambda: "BioVerseApiDown" in _firing(prom), 30)
