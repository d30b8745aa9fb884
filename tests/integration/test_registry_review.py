"""The clinical review workflow (issue 4) against a real embedded MLflow registry.

Three versions are registered for real once per module (:func:`register_risk_models`, which tags
``launched_by`` with the OS login, ``os:<login>``); each test then gets a fresh registered model
whose versions reuse those models but have their own runs, launched by the API key of Dana (a
data scientist), to which the test adds the validation report and tags the coordinator writes.
Deciders are API-key identities (:class:`experiments.gate.Identity`); approval takes a read
receipt of the report (issue 10 items 1-4).
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

from experiments.errors import (
    ExperimentError,
    LauncherUnknown,
    NotApproved,
    NothingToRollBack,
    NotPending,
    RationaleRequired,
    RationaleTooLong,
    ReportMissing,
    ReportNotRead,
    ReportStale,
    ReviewError,
    SelfApproval,
    VersionNotFound,
    WrongScope,
)
from experiments.gate import APPROVAL_TAG, TENANT_TAG, Identity, issue_receipt
from experiments.registry import HISTORY_TAG, ModelRegistry
from experiments.registry_reader import QUALITY_TAG
from experiments.review_records import audit_action
from experiments.tracking import RunTracker
from tests.integration.conftest import clear_platform_caches, register_risk_models, tracking_uri

LAUNCHER = f"os:{getpass.getuser()}"
DANA = Identity("key", "Dana Scientist", "k-dana", "t1")  # launched every version of a Store
QUINN = Identity("key", "Dr Quinn", "k-quinn")  # platform-wide clinical validators (no tenant)
WHO = Identity("key", "Dr Who", "k-who")
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
    register_risk_models(uri, "base-risk", sorted(hospitals_dir.glob("hospital-*.csv")), versions=3, production=False)
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
                    "review_status": "pending", "launched_by": DANA.tag}
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

    def receipt(self, version: str, reader: Identity = QUINN) -> str:
        """What fetching the report gives the reader."""
        receipt = self.registry.receipt(self.name, version, reader)
        assert receipt is not None
        return receipt

    def approve(self, version: str, validator: Identity = QUINN) -> None:
        self.registry.approve(self.name, version, validator=validator, rationale=WHY, receipt=self.receipt(version, validator))


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
    assert RunTracker(uri, launched_by=f"  {DANA.tag} ").launched_by == DANA.tag
    assert RunTracker(uri).launched_by == LAUNCHER  # unauthenticated: an OS login, marked os:
    infos = ModelRegistry(uri).versions(name)
    assert [v.version for v in infos] == ["3", "2", "1"]  # newest first
    assert infos[0].aliases == ("candidate",) and infos[0].review_status == "pending"
    assert infos[0].launched_by == LAUNCHER and infos[0].validation_status == "missing"


# ---------------------------------------------------------------- the happy path


def test_approve_promote_approve_promote_rollback(store: Callable[..., Store]) -> None:
    s = store(3)
    r = s.registry
    sha1, _sha2 = s.add_report("1"), s.add_report("2", sample_report(0.84))
    assert r.report_sha256(s.name, "1") == sha1 and r.report(s.name, "1") == sample_report()
    assert r.report(s.name, "3") is None and r.report_sha256(s.name, "3") is None and r.receipt(s.name, "3", QUINN) is None

    d1 = r.approve(s.name, "1", validator=QUINN, rationale=f"  {WHY}  ", receipt=s.receipt("1"))
    assert (d1.action, d1.outcome, d1.actor, d1.version, d1.rationale, d1.report_sha256) == (
        "approve", "approved", "Dr Quinn (key k-quinn)", "1", WHY, sha1)
    assert d1.audit_action == f"registry.approve {s.name}/1" and d1.as_dict()["at"] == d1.at
    tags = s.tags("1")
    assert tags["review_status"] == "approved" and tags["review.decided_by"] == "Dr Quinn (key k-quinn)"
    assert tags["review.decided_by_key"] == "k-quinn" and tags[APPROVAL_TAG].startswith("v1 platform ")
    assert tags["review.rationale"] == WHY and tags["review.report_sha256"] == sha1
    assert tags["review.decided_at"] == d1.at and d1.at.endswith("Z")
    info = r.show(s.name, "1")
    assert (info.review_status, info.decided_by, info.decided_at, info.rationale) == ("approved", d1.actor, d1.at, WHY)
    assert info.auroc == pytest.approx(0.81) and info.calibration_slope == pytest.approx(0.97)
    assert info.epsilon == pytest.approx(1.9) and info.experiment == "test-cardiac" and info.report_sha256 == sha1
    assert str(r.report_html_uri(s.name, "1")).endswith(f"{s.run_id('1')}/artifacts/validation/report.html")

    p1 = r.promote(s.name, "1", actor="ops")
    assert (p1.outcome, p1.previous) == ("promoted", None) and s.production() == "1"
    assert r.show(s.name, "1").aliases == ("production",) and r.show(s.name, "1").gate_warning is None
    assert r.promote(s.name, "1", actor="ops").outcome == "unchanged" and s.history() == "1"

    r.approve(s.name, "2", validator=WHO, rationale=WHY, receipt=s.receipt("2", WHO))
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
    d = s.registry.reject(s.name, "1", validator=QUINN, rationale="Calibration is poor in the over-75 subgroup.")
    assert (d.outcome, d.report_sha256) == ("rejected", None)  # no report needed to reject
    assert s.tags("1")["review_status"] == "rejected" and s.tags("1")["review.report_sha256"] == "none"
    assert APPROVAL_TAG not in s.tags("1")
    with pytest.raises(NotApproved, match="version 1 is rejected"):
        s.registry.promote(s.name, "1", actor="ops")
    with pytest.raises(NotApproved):
        s.registry.rollback(s.name, actor="ops", to_version="1")
    assert s.production() is None


# ---------------------------------------------------------------- refusals


def test_a_decided_version_cannot_be_decided_again(store: Callable[..., Store]) -> None:
    s = store(1)
    s.add_report("1")
    s.approve("1")
    with pytest.raises(NotPending, match="already approved"):
        s.registry.approve(s.name, "1", validator=WHO, rationale=WHY, receipt=s.receipt("1", WHO))
    with pytest.raises(NotPending, match="already approved"):
        s.registry.reject(s.name, "1", validator=WHO, rationale=WHY)
    assert s.tags("1")["review.decided_by"] == QUINN.display


def test_the_launcher_cannot_decide_on_their_own_model(store: Callable[..., Store]) -> None:
    """Issue 10 item 1: same key, or the same person through another key, is refused."""
    s = store(1)
    s.add_report("1")
    for who in (Identity("key", "Dana Scientist", "k-dana"), Identity("key", " dana  SCIENTIST ", "k-dana-validator"),
                Identity("key", "Someone", "k-dana")):
        with pytest.raises(SelfApproval, match="independent clinical validator"):
            s.registry.approve(s.name, "1", validator=who, rationale=WHY, receipt=s.receipt("1", who))
        with pytest.raises(SelfApproval):
            s.registry.reject(s.name, "1", validator=who, rationale=WHY)
    with pytest.raises(ReviewError, match="names no person"):  # an unnamed key cannot be compared by person
        s.registry.approve(s.name, "1", validator=Identity("key", "", "k-anon"), rationale=WHY,
                           receipt=s.receipt("1", Identity("key", "", "k-anon")))
    s.client.set_model_version_tag(s.name, "1", "launched_by", "key:k-unnamed/")  # an unnamed launching key
    with pytest.raises(LauncherUnknown, match="names no person"):
        s.approve("1")
    s.client.set_model_version_tag(s.name, "1", "launched_by", LAUNCHER)  # an OS login: cannot be compared
    with pytest.raises(LauncherUnknown, match="OS login, unauthenticated"):
        s.approve("1")
    s.client.set_model_version_tag(s.name, "1", "launched_by", "dr.quinn")  # a legacy free-text name: same
    with pytest.raises(LauncherUnknown, match="cannot be compared"):
        s.approve("1")
    s.client.delete_model_version_tag(s.name, "1", "launched_by")
    with pytest.raises(LauncherUnknown, match="no launched_by tag"):
        s.approve("1")
    assert_untouched(s, "1")


def test_who_may_approve_platform_wide_and_tenant_models(store: Callable[..., Store]) -> None:
    """Issue 10 item 1: a tenant-bound validator key cannot approve the platform-wide model."""
    s = store(2)
    s.add_report("1")
    s.add_report("2")
    t1_validator, t2_validator = Identity("key", "Dr T1", "k-t1", "t1"), Identity("key", "Dr T2", "k-t2", "t2")
    with pytest.raises(WrongScope, match="platform-wide model; a validator key of tenant t1"):
        s.approve("1", t1_validator)
    assert_untouched(s, "1")
    s.client.set_registered_model_tag(s.name, TENANT_TAG, "t1")  # the model belongs to tenant t1
    with pytest.raises(WrongScope, match="tenant t1's model"):
        s.approve("1", t2_validator)
    s.approve("1", t1_validator)
    assert s.tags("1")[APPROVAL_TAG].startswith("v1 tenant:t1 ")  # serving the platform model refuses this scope
    s.approve("2")  # platform validators may decide on a tenant's model too
    assert s.tags("2")[APPROVAL_TAG].startswith("v1 platform ")


def test_approval_needs_a_receipt_of_the_report(store: Callable[..., Store]) -> None:
    """Issue 10 item 3: the hash alone, another validator's receipt, a forged one: refused."""
    s = store(1)
    sha = s.add_report("1")
    assert s.registry.show(s.name, "1").report_sha256 == sha  # anyone can read the hash from the tags...
    for receipt in ("", sha, f"{sha}.9999999999.{'0' * 64}", s.receipt("1", WHO)):
        with pytest.raises(ReportNotRead):  # ...but only fetching the report yields a receipt
            s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY, receipt=receipt)
    with pytest.raises(ReportNotRead):  # a receipt given with a rejection is checked too
        s.registry.reject(s.name, "1", validator=QUINN, rationale=WHY, receipt=s.receipt("1", WHO))
    assert_untouched(s, "1")
    s.approve("1")
    assert s.tags("1")["review.report_sha256"] == sha


def test_approval_needs_the_report(store: Callable[..., Store]) -> None:
    s = store(2)
    receipt = issue_receipt(QUINN.key_id, s.name, "1", "0" * 64)  # as if a report had been read
    with pytest.raises(ReportMissing, match="no validation report"):
        s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY, receipt=receipt)
    s.client.set_model_version_tag(s.name, "1", "validation.status", "missing")
    with pytest.raises(ReportMissing, match="validation.status missing"):
        s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY, receipt=receipt)
    sha = s.add_report("2")  # tags say complete but the artifact is gone
    s.client.set_model_version_tag(s.name, "1", "validation.status", "complete")
    s.client.set_model_version_tag(s.name, "1", "validation.report_sha256", sha)
    with pytest.raises(ReportMissing, match="no validation/report.json"):
        s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY,
                           receipt=issue_receipt(QUINN.key_id, s.name, "1", sha))
    assert_untouched(s, "1")


def test_approval_of_a_stale_report_is_refused(store: Callable[..., Store]) -> None:
    s = store(2)
    s.add_report("1")
    with pytest.raises(ReportStale, match="the report you read"):
        s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY,
                           receipt=issue_receipt(QUINN.key_id, s.name, "1", "ab" * 32))
    read_before = s.receipt("1")
    tampered = canonical(sample_report(0.99))
    s.client.log_text(s.run_id("1"), tampered.decode(), "validation/report.json")  # overwrites the artifact
    assert s.registry.report_sha256(s.name, "1") == hashlib.sha256(tampered).hexdigest()
    for receipt in (read_before, s.receipt("1")):
        with pytest.raises(ReportStale, match="changed since registration"):
            s.registry.approve(s.name, "1", validator=QUINN, rationale=WHY, receipt=receipt)
    with pytest.raises(ReportStale):  # a rejection that names a receipt is checked the same way
        s.registry.reject(s.name, "1", validator=QUINN, rationale=WHY, receipt=read_before)
    assert_untouched(s, "1")
    # a report altered after approval blocks the promotion
    s.add_report("2")
    s.approve("2")
    s.client.log_text(s.run_id("2"), tampered.decode(), "validation/report.json")
    with pytest.raises(ReportStale):
        s.registry.promote(s.name, "2", actor="ops")
    assert s.production() is None


def test_a_version_approved_by_hand_cannot_be_promoted(store: Callable[..., Store]) -> None:
    """Issue 10 item 4: tags written with the plain MLflow client are no approval."""
    s = store(2)
    s.add_report("1")
    s.approve("1")
    for key, value in {"review_status": "approved", "review.decided_by": "Dr Quinn (key k-quinn)",
                       "review.report_sha256": s.tags("1")["review.report_sha256"], APPROVAL_TAG: s.tags("1")[APPROVAL_TAG]}.items():
        s.client.set_model_version_tag(s.name, "2", key, value)  # copied from version 1
    with pytest.raises(NotApproved, match="does not verify"):
        s.registry.promote(s.name, "2", actor="ops")
    with pytest.raises(NotApproved, match="does not verify"):
        s.registry.rollback(s.name, actor="ops", to_version="2")
    s.client.set_registered_model_alias(s.name, "production", "2")  # moved by hand
    info = s.registry.show(s.name, "2")
    assert info.gate_warning is not None and info.gate_warning.startswith("production alias without approval")
    assert s.registry.show(s.name, "1").gate_warning is None


def test_rationale_is_required_and_bounded(store: Callable[..., Store]) -> None:
    s = store(1)
    s.add_report("1")
    for text in ("", "looks fine", "   " + "x" * 19 + "   \n", " " * 40):
        with pytest.raises(RationaleRequired, match="at least 20 characters"):
            s.registry.approve(s.name, "1", validator=QUINN, rationale=text, receipt=s.receipt("1"))
    with pytest.raises(RationaleTooLong, match="at most 5000"):
        s.registry.approve(s.name, "1", validator=QUINN, rationale="y" * 5001, receipt=s.receipt("1"))
    assert_untouched(s, "1")
    long = "z" * 5000
    s.registry.approve(s.name, "1", validator=QUINN, rationale=long, receipt=s.receipt("1"))
    assert s.registry.show(s.name, "1").rationale == long


def test_unknown_versions_and_models(store: Callable[..., Store]) -> None:
    s = store(1)
    for version in ("9", "x"):
        with pytest.raises(VersionNotFound):
            s.registry.show(s.name, version)
    with pytest.raises(VersionNotFound, match="no registered model 'nope'"):
        s.registry.versions("nope")
    with pytest.raises(VersionNotFound):
        s.registry.approve(s.name, "9", validator=QUINN, rationale=WHY, receipt="")
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
    s.add_report("1")
    s.add_report("2")
    first, second = ModelRegistry(s.uri), ModelRegistry(s.uri)
    tag = first._tag

    def other_decides_meanwhile(name: str, version: str, key: str, value: str) -> None:
        tag(name, version, key, value)
        if key == "review.claim" and version == "1":
            second.reject(name, version, validator=WHO, rationale="Rejected by the other validator in time.")
        if key == "review.claim" and version == "2":
            s.client.set_model_version_tag(name, version, "review.claim", "someone-else")

    monkeypatch.setattr(first, "_tag", other_decides_meanwhile)
    with pytest.raises(NotPending, match="already rejected"):
        first.approve(s.name, "1", validator=QUINN, rationale=WHY, receipt=s.receipt("1"))
    assert s.tags("1")["review_status"] == "rejected" and s.tags("1")["review.decided_by"] == WHO.display
    assert APPROVAL_TAG not in s.tags("1")
    with pytest.raises(NotPending, match="someone else"):
        first.approve(s.name, "2", validator=QUINN, rationale=WHY, receipt=s.receipt("2"))
    assert_untouched(s, "2")


# ---------------------------------------------------------------- the CLI


def test_cli_decisions_need_an_api_key_and_its_person_decides(store: Callable[..., Store], isolated_home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10 item 2: no free-text --validator; the key's person decides, independence by person."""
    from platform_api import cli
    from platform_api.auth import create_key
    from platform_api.cli.access import api_session
    from platform_api.cli.output import out

    s = store(2)
    sha1 = s.add_report("1")
    s.add_report("2")
    s.client.set_model_version_tag(s.name, "2", QUALITY_TAG, "AUROC 95% CI reaches 0.5: no better than chance")
    monkeypatch.setenv("BIOVERSE_API_MODEL_NAME", s.name)
    monkeypatch.setenv("BIOVERSE_TRACKING_URI", s.uri)
    monkeypatch.delenv("BIOVERSE_API_KEY", raising=False)
    monkeypatch.setattr(out, "_width", 250)  # a wide table, restored afterwards
    clear_platform_caches()
    runner = CliRunner()

    def bioverse(*args: str, key: str | None = None) -> Any:
        return runner.invoke(cli.app, ["registry", *args], env={"BIOVERSE_API_KEY": key} if key else None)

    def one_error_line(result: Any) -> str:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and "Traceback" not in result.output, result.output
        return lines[0]

    try:
        with api_session() as session:
            dana_ds = create_key(session, role="data_scientist", tenant_id="t1", name="Dana Scientist")
            dana_validator = create_key(session, role="clinical_validator", tenant_id=None, name="dana scientist")
            quinn = create_key(session, role="clinical_validator", tenant_id=None, name="Dr Quinn")
            t1_validator = create_key(session, role="clinical_validator", tenant_id="t1", name="Dr Tenant")
        dana_id = dana_ds.split("_")[1]
        for v in ("1", "2"):  # Dana launched both, with her key
            s.client.set_model_version_tag(s.name, v, "launched_by", f"key:{dana_id}/Dana Scientist")

        listed = bioverse("list")
        assert listed.exit_code == 0, listed.output
        assert s.name in listed.output and listed.output.count("pending") == 2 and "no better than chance" in listed.output
        shown = bioverse("show", "2")
        assert shown.exit_code == 0 and "QUALITY WARNING: AUROC 95% CI reaches 0.5" in shown.output, shown.output

        # the old free-text claim is gone: typing another name approves nothing
        forged = bioverse("approve", "1", "--rationale", WHY, "--receipt", "x", "--validator", "Dr Quinn")
        assert forged.exit_code != 0 and s.tags("1")["review_status"] == "pending"
        assert "API key is required" in one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt", "x"))
        assert "API key refused" in one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt", "x",
                                                            key=f"bv_{dana_id}_wrongsecret"))
        assert "role data_scientist may not" in one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt",
                                                                        "x", key=dana_ds))

        report = bioverse("report", "1", key=dana_validator)
        assert report.exit_code == 0, report.output
        receipt = report.output.split("Read receipt (valid 4 h, yours only): ")[1].split()[0]
        assert receipt.startswith(sha1)
        own = one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt", receipt, key=dana_validator))
        assert "independent clinical validator" in own  # Dana's validator key: the same person
        copied = one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt", receipt, key=quinn))
        assert "not issued to you" in copied  # Dana's receipt is not Quinn's reading
        hash_only = one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt", sha1, key=quinn))
        assert "receipt is required" in hash_only
        scoped = one_error_line(bioverse("approve", "1", "--rationale", WHY, "--receipt",
                                         s.receipt("1", Identity("key", "Dr Tenant", t1_validator.split("_")[1], "t1")),
                                         key=t1_validator))
        assert "platform-wide model" in scoped
        assert s.tags("1")["review_status"] == "pending"

        read = bioverse("report", "1", key=quinn)
        receipt = read.output.split("Read receipt (valid 4 h, yours only): ")[1].split()[0]
        ok = bioverse("approve", "1", "--rationale", WHY, "--receipt", receipt, key=quinn)
        quinn_id = quinn.split("_")[1]
        assert ok.exit_code == 0 and f"approved {s.name} version 1 by Dr Quinn (key {quinn_id})" in ok.output, ok.output
        promoted = bioverse("promote", "1", key=quinn)
        assert promoted.exit_code == 0 and "promoted" in promoted.output and s.production() == "1", promoted.output
        assert "role clinical_validator may not" in one_error_line(bioverse("rollback", key=quinn))  # admins only
        shown = bioverse("show", "1")
        assert f"approved by Dr Quinn (key {quinn_id}) at " in shown.output and WHY in shown.output, shown.output

        from sqlalchemy import select

        from platform_api.models import AuditEvent

        with api_session() as session:
            events = [(e.actor, e.role, e.action, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
        dana_validator_id = dana_validator.split("_")[1]
        assert (dana_validator_id, "clinical_validator", f"registry.approve {s.name}/1", "selfapproval") in events
        assert (quinn_id, "clinical_validator", f"registry.approve {s.name}/1", "reportnotread") in events
        assert (quinn_id, "clinical_validator", f"registry.approve {s.name}/1", "ok") in events
        assert (quinn_id, "clinical_validator", f"registry.promote {s.name}/1", "ok") in events
    finally:
        clear_platform_caches()


def test_cli_keys_name_their_person_and_an_authenticated_launch_records_it(isolated_home: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10 items 1-2: launched_by is the launching key's person, not a free-text or OS name."""
    from platform_api import cli
    from platform_api.cli.access import launched_by

    monkeypatch.delenv("BIOVERSE_API_KEY", raising=False)
    clear_platform_caches()
    runner = CliRunner()
    try:
        unnamed = runner.invoke(cli.app, ["api", "key", "create", "--role", "clinical_validator"])
        assert unnamed.exit_code == 1 and "needs --name" in unnamed.output and "\n" not in unnamed.output.strip()
        tenantless_app = runner.invoke(cli.app, ["api", "key", "create", "--role", "app", "--name", "ward app"])
        assert tenantless_app.exit_code == 1 and "needs a tenant" in tenantless_app.output
        platform_validator = runner.invoke(cli.app, ["api", "key", "create", "--role", "clinical_validator", "--name", "Dr Quinn"])
        assert platform_validator.exit_code == 0 and platform_validator.output.startswith("bv_"), platform_validator.output
        dana = runner.invoke(cli.app, ["api", "key", "create", "--role", "data_scientist", "--tenant", "t1",
                                       "--name", "Dana Scientist"]).output.strip()

        assert launched_by() is None  # no key: the launcher records os:<login>, which fails closed
        monkeypatch.setenv("BIOVERSE_API_KEY", dana)
        assert launched_by() == f"key:{dana.split('_')[1]}/Dana Scientist"
        monkeypatch.setenv("BIOVERSE_API_KEY", f"bv_{dana.split('_')[1]}_forged")  # a key id alone proves nothing
        with pytest.raises(ValueError, match="API key refused"):
            launched_by()
    finally:
        clear_platform_caches()
