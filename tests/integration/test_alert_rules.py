"""The alerting rules, the example Prometheus config and the Grafana dashboard of deploy/monitoring, checked
with Debian's promtool (rule syntax, the rules' unit tests) and against what the API and Ray export."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "bioverse.rules.yml"
DASHBOARD = MONITORING / "grafana" / "bioverse.json"
#: Ray Serve's own metrics the rules and the dashboard use, and the file of the installed ray
#: that declares each (Ray's metrics agent exports them with the ``ray_`` prefix; counters get ``_total``).
RAY_METRICS = {"ray_serve_deployment_replica_healthy": ("serve/_private/deployment_state.py", "serve_deployment_replica_healthy"),
               "ray_serve_deployment_error_counter_total": ("serve/_private/replica.py", "serve_deployment_error_counter")}
#: Prometheus's own series the rules may use.
PROMETHEUS_SERIES = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}


def require_prometheus(binary: str) -> str:
    """The binary's path; a skip without it, a failure when CI requires it (BIOVERSE_REQUIRE_PROMETHEUS)."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("BIOVERSE_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{binary} is missing and BIOVERSE_REQUIRE_PROMETHEUS is set (apt-get install prometheus)")
        pytest.skip(f"{binary} is not installed (Debian: apt-get install prometheus)")
    return path


def load_rules(path: Path = RULES) -> dict[str, Any]:
    """The rule file as YAML."""
    return yaml.safe_load(path.read_text())


def alerts_and_records(rules: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
    """The alerting rules, and the names the recording rules define."""
    every = [rule for group in rules["groups"] for rule in group["rules"]]
    return [r for r in every if "alert" in r], {r["record"] for r in every if "record" in r}


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every panel target's PromQL expression."""
    dashboard = json.loads(path.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges, groupings and calls left out)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = {m[1] for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", bare) if not m[2]}
    return {n for n in names if n.lower() not in _KEYWORDS}


def ray_metrics_declared() -> dict[str, bool]:
    """For each of :data:`RAY_METRICS`, whether the installed ray declares it (read from its source, not imported)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None
    base = Path(spec.origin).parent
    return {name: f'"{declared}"' in (base / path).read_text() for name, (path, declared) in RAY_METRICS.items()}


def api_metric_names() -> set[str]:
    """The series names the platform API's /metrics can export (its instruments and collectors)."""
    from platform_api.metrics import DRIFT_METRICS, ApiMetrics
    from platform_api.ops_metrics import AUDIT_METRICS, PRIVACY_METRICS

    names: set[str] = set(DRIFT_METRICS) | set(AUDIT_METRICS) | set(PRIVACY_METRICS)
    for metric in ApiMetrics().registry.collect():
        names |= {metric.name} | {f"{metric.name}{suffix}" for suffix in ("_total", "_count", "_sum", "_bucket", "_created")}
    return names


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_prometheus("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=MONITORING)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts, records = alerts_and_records(load_rules())
    assert f"SUCCESS: {len(alerts) + len(records)} rules found" in checked.stdout
    tests = sorted(str(p) for p in (MONITORING / "tests").glob("*.yml"))
    ran = _promtool("test", "rules", *tests)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_the_example_config_parses() -> None:
    checked = _promtool("check", "config", "--syntax-only", str(MONITORING / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/bioverse.rules.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"bioverse-api", "ray"}


def test_every_alert_is_documented_and_unit_tested_both_ways() -> None:
    alerts, _ = alerts_and_records(load_rules())
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    tested: dict[str, set[bool]] = {}
    for path in (MONITORING / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    assert {a["alert"] for a in alerts} >= {"BioVerseApiDown", "BioVerseApiHighErrorRate", "BioVerseApiHighLatencyP99",
                                            "BioVerseServeReplicaUnhealthy", "BioVerseModelDrift",
                                            "BioVersePrivacyBudgetNearlySpent", "BioVerseAuditChainBroken"}
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), name
        anchor = alert["annotations"]["runbook_url"].split("#", 1)
        assert anchor[0] == "docs/monitoring.md" and f'<a id="{anchor[1]}"></a>' in docs, f"{name}: no runbook anchor"
        assert tested.get(name) == {True, False}, f"{name}: needs a unit test that fires it and one that does not"


def test_every_expression_selects_metrics_that_exist() -> None:
    alerts, records = alerts_and_records(load_rules())
    assert all(ray_metrics_declared().values()), ray_metrics_declared()
    known = api_metric_names() | records | set(RAY_METRICS) | PROMETHEUS_SERIES | {"process_resident_memory_bytes"}
    rule_exprs = [r["expr"] for g in load_rules()["groups"] for r in g["rules"]]
    for expr in rule_exprs + dashboard_expressions():
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr}: {sorted(unknown)}"
    assert metric_names('sum by (job) (rate(a_b{route!="/x y"}[5m])) / on(job) c:d > 3 * 3600') == {"a_b", "c:d"}


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert {"job:bioverse_http_error_ratio:rate5m", "job:bioverse_http_request_duration_seconds:p99_5m",
            "job:bioverse_http_request_duration_seconds:p50_5m", "bioverse_predictions_total", "bioverse_model_drift_psi",
            "ray_serve_deployment_replica_healthy", "bioverse_privacy_budget_left_epsilon", "bioverse_audit_verify_ok"} <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] and p["title"] for p in dashboard["panels"])
