"""The clinical review workflow (issue 4) against a real embedded MLflow registry.

Three versions are registered for real once per module (:func:`register_risk_models`, which tags
``launched_by`` with the OS user); each test then gets a fresh registered model whose versions
reuse those models but have their own runs, to which the test adds the validation report and
tags the coordinator writes at registration.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from experiments.errors import ExperimentError
from experiments.registry import (
    HISTORY_TAG,
    LauncherUnknown,
    ModelRegistry,
    NotApproved,
    NothingToRollBack,
    NotPending,
    RationaleRequired,
    RationaleTooLong,
    ReportMissing,
    ReportStale,
    ReviewError,
    SelfApproval,
    VersionNotFound,
    audit_action,
)
from experiments.tracking import RunTracker
from tests.integration.conftest import clear_platform_caches, register_risk_models, tracking_uri

LAUNCHER = getpass.getuser()
WHY = "AUROC and calibration acceptable in every subgroup [see report]; reviewed it in full."


def canonical(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sample_report(auroc: float = 0.81) -> dict[str, Any]:
    return {"overall": {"n": 900, "auroc": auroc, "calibration_slope": 0.97, "brier": 0.12}, "subgroups": [],
            "suppressed": [], "hospitals": ["hospital-01", "hospital-02"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> tuple[str, str]:
    """One real registration of three versions; returns (tracking URI, model name)."""
    uri = tracking_uri(tmp_path_factory.mktemp("registry"))
    register_risk_models(uri, "base-risk", sorted(hospitals_dir.glob("hospital-*.csv")), versions=3)
    return uri, "base-risk"


class Store:
    """A fresh registered model cloned from the base versions, with helpers to shape it."""

    def __init__(self, uri: str, base_name: str, versions: int) -> None:
        self.uri = uri
        self.client = MlflowClient(uri, registry_uri=uri)
        self.registry = ModelRegistry(uri)
        self.name = f"risk-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(self.name)
        for number in range(1, versions + 1):
            mv = self.client.get_model_version(base_name, str(number))
            run = self.client.create_run(self.client.get_run(str(mv.run_id)).info.experiment_id)
            self.client.set_terminated(run.info.run_id)
            tags = {**mv.tags, "run_id": run.info.run_id, "experiment": "test-cardiac", "epsilon": "1.9000",
                    "review_status": "pending"}
            self.client.create_model_version(self.name, str(mv.source), run_id=run.info.run_id, tags=tags)

    def run_id(self, version: str) -> str:
        return str(self.client.get_model_version(self.name, version).run_id)

    def add_report(self, version: str, report: dict[str, Any] | None = None) -> str:
        """What the coordinator does: report.json in the run, validation.* tags on the version."""
        report = report or sample_report()
        data = canonical(report)
        self.client.log_text(self.run_id(version), data.decode(), "validation/report.json")
        self.client.log_text(self.run_id(version), "<html>report</html>", "validation/report.html")
        sha = hashlib.sha256(data).hexdigest()
        tags = {"validation.status": "complete", "validation.report_sha256": sha,
                "validation.auroc": f"{report['overall']['auroc']:.4f}", "validation.calibration_slope": "0.9700"}
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        return sha

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags)

    def production(self) -> str | None:
        version = self.client.get_registered_model(self.name).aliases.get("production")
        return None if version is None else str(version)

    def history(self) -> str | None:
        return self.client.get_registered_model(self.name).tags.get(HISTORY_TAG)

    def approve(self, version: str, validator: str = "dr.quinn") -> None:
        sha = self.registry.report_sha256(self.name, version)
        assert sha is not None
        self.registry.approve(self.name, version, validator=validator, rationale=WHY, report_sha256=sha)


@pytest.fixture()
def store(base: tuple[str, str]) -> Callable[..., Store]:
    return lambda versions=3: Store(*base, versions)


def assert_untouched(s: Store, version: str) -> None:
    tags = s.tags(version)
    assert tags["review_status"] == "pending"
    assert not any(k.startswith("review.") and k != "review.claim" for k in tags), tags


# ---------------------------------------------------------------- registration


def test_registration_tags_who_launched(base: tuple[str, str]) -> None:
    uri, name = base
    client = MlflowClient(uri, registry_uri=uri)
    assert {client.get_model_version(name, v).tags["launched_by"] for v in ("1", "2", "3")} == {LAUNCHER}
    assert RunTracker(uri, launched_by="  alice ").launched_by == "alice"
    assert RunTracker(uri).launched_by == LAUNCHER
    infos = ModelRegistry(uri).versions(name)
    assert [v.version for v in infos] == ["3", "2", "1"]  # newest first
    assert infos[0].aliases == ("candidate",) and infos[0].review_status == "pending"
    assert infos[0].launched_by == LAUNCHER and infos[0].validation_status == "missing"


# ---------------------------------------------------------------- the happy path


def test_approve_promote_approve_promote_rollback(store: Callable[..., Store]) -> None:
    s = store(3)
    r = s.registry
    sha1, sha2 = s.add_report("1"), s.add_report("2", sample_report(0.84))
    assert r.report_sha256(s.name, "1") == sha1 and r.report(s.name, "1") == sample_report()
    assert r.report(s.name, "3") is None and r.report_sha256(s.name, "3") is None

    d1 = r.approve(s.name, "1", validator="dr.quinn", rationale=f"  {WHY}  ", report_sha256=sha1.upper())
    assert (d1.action, d1.outcome, d1.actor, d1.version, d1.rationale, d1.report_sha256) == (
        "approve", "approved", "dr.quinn", "1", WHY, sha1)
    assert d1.audit_action == f"registry.approve {s.name}/1" and d1.as_dict()["at"] == d1.at
    tags = s.tags("1")
    assert tags["review_status"] == "approved" and tags["review.decided_by"] == "dr.quinn"
    assert tags["review.rationale"] == WHY and tags["review.report_sha256"] == sha1
    assert tags["review.decided_at"] == d1.at and d1.at.endswith("+00:00")
    info = r.show(s.name, "1")
    assert (info.review_status, info.decided_by, info.decided_at, info.rationale) == ("approved", "dr.quinn", d1.at, WHY)
    assert info.auroc == pytest.approx(0.81) and info.calibration_slope == pytest.approx(0.97)
    assert info.epsilon == pytest.approx(1.9) and info.experiment == "test-cardiac" and info.report_sha256 == sha1
    assert str(r.report_html_uri(s.name, "1")).endswith(f"{s.run_id('1')}/artifacts/validation/report.html")

    p1 = r.promote(s.name, "1", actor="ops")
    assert (p1.outcome, p1.previous) == ("promoted", None) and s.production() == "1"
    assert r.show(s.name, "1").aliases == ("production",)
    assert r.promote(s.name, "1", actor="ops").outcome == "unchanged" and s.history() == "1"

    r.approve(s.name, "2", validator="dr.who", rationale=WHY, report_sha256=sha2)
    p2 = r.promote(s.name, "2", actor="ops")
    assert (p2.outcome, p2.previous, s.production(), s.history()) == ("promoted", "1", "2", "1,2")

    back = r.rollback(s.name, actor="ops")
    assert (back.action, back.outcome, back.version, back.previous) == ("rollback", "rolled back", "1", "2")
    assert s.production() == "1" and s.history() == "1"
    with pytest.raises(NothingToRollBack, match="no earlier approved version"):
        r.rollback(s.name, actor="ops")
    # forward again to 2 on purpose, then an explicit target
    to2 = r.rollback(s.name, actor="ops", to_version="2")
    assert s.production() == "2" and s.history() == "1,2" and to2.previous == "1"


def test_rejected_and_pending_versions_cannot_be_promoted(store: Callable[..., Store]) -> None:
    s = store(2)
    with pytest.raises(NotApproved, match="version 1 is pending"):
        s.registry.promote(s.name, "1", actor="ops")
    d = s.registry.reject(s.name, "1", validator="dr.quinn", rationale="Calibration is poor in the over-75 subgroup.")
    assert (d.outcome, d.report_sha256) == ("rejected", None)  # no report needed to reject
    assert s.tags("1")["review_status"] == "rejected" and s.tags("1")["review.report_sha256"] == "none"
    with pytest.raises(NotApproved, match="version 1 is rejected"):
        s.registry.promote(s.name, "1", actor="ops")
    with pytest.raises(NotApproved):
        s.registry.rollback(s.name, actor="ops", to_version="1")
    assert s.production() is None


# ---------------------------------------------------------------- refusals


def test_a_decided_version_cannot_be_decided_again(store: Callable[..., Store]) -> None:
    s = store(1)
    sha = s.add_report("1")
    s.approve("1")
    with pytest.raises(NotPending, match="already approved"):
        s.registry.approve(s.name, "1", validator="dr.other", rationale=WHY, report_sha256=sha)
    with pytest.raises(NotPending, match="already approved"):
        s.registry.reject(s.name, "1", validator="dr.other", rationale=WHY)
    assert s.tags("1")["review.decided_by"] == "dr.quinn"


def test_the_launcher_cannot_decide_on_their_own_model(store: Callable[..., Store]) -> None:
    s = store(1)
    sha = s.add_report("1")
    for who in (LAUNCHER, f" {LAUNCHER.upper()} "):
        with pytest.raises(SelfApproval, match="independent clinical validator"):
            s.registry.approve(s.name, "1", validator=who, rationale=WHY, report_sha256=sha)
    with pytest.raises(SelfApproval):
        s.registry.reject(s.name, "1", validator=LAUNCHER, rationale=WHY)
    s.client.delete_model_version_tag(s.name, "1", "launched_by")
    with pytest.raises(LauncherUnknown, match="no launched_by tag"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256=sha)
    assert_untouched(s, "1")


def test_approval_needs_the_report(store: Callable[..., Store]) -> None:
    s = store(2)
    with pytest.raises(ReportMissing, match="no validation report"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256="0" * 64)
    s.client.set_model_version_tag(s.name, "1", "validation.status", "missing")
    with pytest.raises(ReportMissing, match="validation.status missing"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256="0" * 64)
    sha = s.add_report("2")  # tags say complete but the artifact is gone
    s.client.set_model_version_tag(s.name, "1", "validation.status", "complete")
    s.client.set_model_version_tag(s.name, "1", "validation.report_sha256", sha)
    with pytest.raises(ReportMissing, match="no validation/report.json"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256=sha)
    assert_untouched(s, "1")


def test_approval_of_a_stale_report_is_refused(store: Callable[..., Store]) -> None:
    s = store(2)
    sha = s.add_report("1")
    with pytest.raises(ReportStale, match="the report you read"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256="ab" * 32)
    tampered = canonical(sample_report(0.99))
    s.client.log_text(s.run_id("1"), tampered.decode(), "validation/report.json")  # overwrites the artifact
    assert s.registry.report_sha256(s.name, "1") == hashlib.sha256(tampered).hexdigest()
    for seen in (sha, hashlib.sha256(tampered).hexdigest()):
        with pytest.raises(ReportStale, match="changed since registration"):
            s.registry.approve(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256=seen)
    with pytest.raises(ReportStale):  # a rejection that names a hash is checked the same way
        s.registry.reject(s.name, "1", validator="dr.quinn", rationale=WHY, report_sha256=sha)
    assert_untouched(s, "1")
    # a report altered after approval blocks the promotion
    s.add_report("2")
    s.approve("2")
    s.client.log_text(s.run_id("2"), tampered.decode(), "validation/report.json")
    with pytest.raises(ReportStale):
        s.registry.promote(s.name, "2", actor="ops")
    assert s.production() is None


def test_rationale_is_required_and_bounded(store: Callable[..., Store]) -> None:
    s = store(1)
    sha = s.add_report("1")
    for text in ("", "looks fine", "   " + "x" * 19 + "   \n", " " * 40):
        with pytest.raises(RationaleRequired, match="at least 20 characters"):
            s.registry.approve(s.name, "1", validator="dr.quinn", rationale=text, report_sha256=sha)
    with pytest.raises(RationaleTooLong, match="at most 5000"):
        s.registry.approve(s.name, "1", validator="dr.quinn", rationale="y" * 5001, report_sha256=sha)
    assert_untouched(s, "1")
    long = "z" * 5000
    s.registry.approve(s.name, "1", validator="dr.quinn", rationale=long, report_sha256=sha)
    assert s.registry.show(s.name, "1").rationale == long


def test_unknown_versions_and_models(store: Callable[..., Store]) -> None:
    s = store(1)
    for version in ("9", "x"):
        with pytest.raises(VersionNotFound):
            s.registry.show(s.name, version)
    with pytest.raises(VersionNotFound, match="no registered model 'nope'"):
        s.registry.versions("nope")
    with pytest.raises(VersionNotFound):
        s.registry.approve(s.name, "9", validator="dr.quinn", rationale=WHY, report_sha256="0" * 64)
    assert issubclass(ReviewError, ExperimentError)


def test_rollback_rules(store: Callable[..., Store]) -> None:
    s = store(3)
    with pytest.raises(NothingToRollBack, match="no production version"):
        s.registry.rollback(s.name, actor="ops")
    for v in ("1", "2", "3"):
        s.add_report(v)
        s.approve(v)
    s.client.set_registered_model_alias(s.name, "production", "1")  # set outside the workflow (legacy)
    s.registry.promote(s.name, "2", actor="ops")
    s.registry.promote(s.name, "3", actor="ops")
    assert s.history() == "1,2,3"
    s.client.set_model_version_tag(s.name, "2", "review_status", "revoked")  # no longer approved
    d = s.registry.rollback(s.name, actor="ops")
    assert (d.version, d.previous, s.production(), s.history()) == ("1", "3", "1", "1")
    with pytest.raises(NothingToRollBack, match="already in production"):
        s.registry.rollback(s.name, actor="ops", to_version="1")
    with pytest.raises(NotApproved, match="revoked"):
        s.registry.rollback(s.name, actor="ops", to_version="2")
    assert audit_action("rollback", "m" * 80, "12").endswith(".../12") and len(audit_action("rollback", "m" * 80, "12")) == 64


def test_concurrent_decisions_second_sees_not_pending(store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(2)
    sha1, sha2 = s.add_report("1"), s.add_report("2")
    first, second = ModelRegistry(s.uri), ModelRegistry(s.uri)
    tag = first._tag

    def other_decides_meanwhile(name: str, version: str, key: str, value: str) -> None:
        tag(name, version, key, value)
        if key == "review.claim" and version == "1":
            second.reject(name, version, validator="dr.b", rationale="Rejected by the other validator in time.")
        if key == "review.claim" and version == "2":
            s.client.set_model_version_tag(name, version, "review.claim", "someone-else")

    monkeypatch.setattr(first, "_tag", other_decides_meanwhile)
    with pytest.raises(NotPending, match="already rejected"):
        first.approve(s.name, "1", validator="dr.a", rationale=WHY, report_sha256=sha1)
    assert s.tags("1")["review_status"] == "rejected" and s.tags("1")["review.decided_by"] == "dr.b"
    with pytest.raises(NotPending, match="someone else"):
        first.approve(s.name, "2", validator="dr.a", rationale=WHY, report_sha256=sha2)
    assert_untouched(s, "2")


# ---------------------------------------------------------------- the CLI


def test_cli_list_show_approve_promote_rollback(store: Callable[..., Store], isolated_home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_api import cli

    s = store(2)
    sha1, sha2 = s.add_report("1"), s.add_report("2")
    monkeypatch.setenv("BIOVERSE_API_MODEL_NAME", s.name)
    monkeypatch.setenv("BIOVERSE_TRACKING_URI", s.uri)
    monkeypatch.setattr(cli.out, "_width", 200)  # a wide table, restored afterwards
    clear_platform_caches()
    runner = CliRunner()

    def bioverse(*args: str) -> Any:
        return runner.invoke(cli.app, ["registry", *args])

    try:
        listed = bioverse("list")
        assert listed.exit_code == 0, listed.output
        assert s.name in listed.output and listed.output.count("pending") == 2 and "0.810" in listed.output

        shown = bioverse("show", "1")
        assert shown.exit_code == 0, shown.output
        assert f"report sha256 {sha1}" in shown.output and "validation/report.html" in shown.output
        assert f"launched_by = {LAUNCHER}" in shown.output

        refused = bioverse("approve", "1", "--rationale", WHY, "--report-sha256", sha1)  # default validator: me
        lines = [line for line in refused.output.splitlines() if line.strip()]
        assert refused.exit_code == 1 and len(lines) == 1, refused.output
        assert lines[0].startswith("error: ") and "independent clinical validator" in lines[0]
        assert "Traceback" not in refused.output and s.tags("1")["review_status"] == "pending"

        for version, sha in (("1", sha1), ("2", sha2)):
            ok = bioverse("approve", version, "--rationale", WHY, "--report-sha256", sha, "--validator", "dr.quinn")
            assert ok.exit_code == 0 and f"approved {s.name} version {version} by dr.quinn" in ok.output, ok.output
            promoted = bioverse("promote", version, "--actor", "ops")
            assert promoted.exit_code == 0 and "promoted" in promoted.output, promoted.output
            assert s.production() == version
        back = bioverse("rollback")
        assert back.exit_code == 0 and f"rolled back {s.name} version 1 (was 2)" in back.output, back.output
        assert s.production() == "1"
        assert "production" in bioverse("list").output
        shown = bioverse("show", "1")
        assert shown.exit_code == 0 and "approved by dr.quinn at " in shown.output and WHY in shown.output, shown.output

        short = bioverse("reject", "1", "--rationale", "nope", "--validator", "dr.quinn")
        assert short.exit_code == 1 and short.output.strip().startswith("error: ") and "\n" not in short.output.strip()

        from sqlalchemy import select

        from platform_api.models import AuditEvent

        with cli._api_session() as session:
            events = [(e.actor, e.role, e.action, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
        assert events[0] == (LAUNCHER[:32], "cli", f"registry.approve {s.name}/1", "selfapproval")
        assert ("dr.quinn", "cli", f"registry.approve {s.name}/1", "ok") in events
        assert ("ops", "cli", f"registry.promote {s.name}/2", "ok") in events
        assert events[-2][2:] == (f"registry.rollback {s.name}/previous", "ok")
        assert events[-1][2:] == (f"registry.reject {s.name}/1", "notpending")  # decided already: refused first
    finally:
        clear_platform_caches()
