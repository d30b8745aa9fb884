"""The operations gauges: budget figures from the newest run per hospital, and what a scrape exports of the checks."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest

from platform_api.ops_metrics import AuditResult, BudgetReport, OpsChecks, OpsCollector, budgets_from_runs


def _scrape(checks: OpsChecks) -> str:
    registry = CollectorRegistry()
    registry.register(OpsCollector(checks))
    return generate_latest(registry).decode()


def test_each_hospital_takes_its_newest_run_and_the_least_budget_left_in_it() -> None:
    runs = [(100.0, {"north/train_epsilon": 1.0, "north/train_budget_left": 9.0, "south/train_budget_left": 7.0}),
            (300.0, {"north/train_epsilon": 3.0, "north/train_budget_left": 4.0, "north/evaluate_selection_epsilon": 0.5,
                     "north/evaluate_budget_left": 2.5, "train_loss": 0.3, "epsilon_max": 3.0}),
            (200.0, {"south/train_budget_left": 6.0})]
    assert budgets_from_runs(runs) == {"north": BudgetReport(2.5, 3.5, 300.0), "south": BudgetReport(6.0, 0.0, 200.0)}
    assert budgets_from_runs([(1.0, {"train_loss": 0.1})]) == {}


def test_a_scrape_exports_the_last_results_and_a_failed_check_as_an_error() -> None:
    outcomes: list[AuditResult | Exception] = [AuditResult(True, 0, 12, 1_700_000_000.0, 0.02), OSError("database gone"),
                                               AuditResult(False, 2, 12, 1_700_000_060.0, 0.03)]

    def verify() -> AuditResult:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    checks = OpsChecks(audit_seconds=60, privacy_seconds=60, verify_audit=verify,
                       read_runs=lambda: [(5.0, {"north/train_budget_left": 0.4, "north/train_epsilon": 1.0})])
    assert "bioverse_audit_verify_ok " not in _scrape(checks)  # nothing verified yet: no audit series
    checks.check_audit()
    checks.check_privacy()
    text = _scrape(checks)
    assert "bioverse_audit_verify_ok 1.0" in text and "bioverse_audit_verify_events 12.0" in text
    assert "bioverse_audit_verify_error 0.0" in text and "bioverse_audit_verify_timestamp_seconds 1.7e+09" in text
    assert 'bioverse_privacy_budget_left_epsilon{hospital="north"} 0.4' in text
    assert 'bioverse_privacy_run_epsilon{hospital="north"} 1.0' in text
    checks.check_audit()  # the database went away: the last result stays, the error shows
    text = _scrape(checks)
    assert "bioverse_audit_verify_ok 1.0" in text and "bioverse_audit_verify_error 1.0" in text
    checks.check_audit()
    text = _scrape(checks)
    assert "bioverse_audit_verify_ok 0.0" in text and "bioverse_audit_verify_breaks 2.0" in text


def test_the_thread_runs_each_check_on_its_interval_and_stops() -> None:
    calls: list[str] = []
    checks = OpsChecks(audit_seconds=0.05, privacy_seconds=0, verify_audit=lambda: calls.append("audit") or  # type: ignore[func-returns-value]
                       AuditResult(True, 0, 0, time.time(), 0.0), read_runs=lambda: calls.append("runs") or [])  # type: ignore[func-returns-value]
    checks.start()
    deadline = time.monotonic() + 5
    while calls.count("audit") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    checks.stop()
    assert calls.count("audit") >= 2 and "runs" not in calls  # privacy off: the tracking store is never read
