"""The review gate's proofs without services: identities, read receipts, approval MACs (issue 10 items 1-4)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from experiments.errors import ReceiptInvalid
from experiments.gate import (
    APPROVAL_TAG,
    Identity,
    approval_problem,
    artifact_digest,
    issue_receipt,
    os_identity,
    parse_identity,
    read_receipt,
    sign_approval,
)

SHA = "ab" * 32


@pytest.fixture(autouse=True)
def gate_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "cd" * 32)


def test_identities_round_trip_and_compare_like_with_like() -> None:
    quinn = Identity("key", "Dr Quinn", "k1", "t1")
    assert parse_identity(quinn.tag) == Identity("key", "Dr Quinn", "k1")
    assert quinn.display == "Dr Quinn (key k1)" and quinn.scope == "tenant:t1"
    assert Identity("key", "x", "k9").scope == "platform"
    # same person through another key, whatever the case and spacing: the same person
    assert quinn.same_person(Identity("key", "  dr   QUINN ", "k2"))
    assert quinn.same_person(Identity("key", "someone else", "k1"))  # the same key
    assert not quinn.same_person(Identity("key", "Dr Who", "k3"))
    assert not Identity("key", "", "k4").same_person(Identity("key", "", "k5"))  # no names: only the key decides
    # an OS login is recorded but cannot be compared with a key (the registry fails closed)
    login = parse_identity("os:quinn")
    assert login == os_identity("quinn") and login.display == "quinn (OS login, unauthenticated)"
    with pytest.raises(ValueError, match="only API-key identities"):
        login.same_person(quinn)
    assert parse_identity("quinn") == os_identity("quinn")  # a legacy bare name reads as an OS login
    assert parse_identity("") is None and parse_identity("unknown") is None and parse_identity(None) is None


def test_a_receipt_is_bound_to_reader_model_version_report_and_time() -> None:
    receipt = issue_receipt("k1", "risk", "3", SHA)
    assert read_receipt(receipt, "k1", "risk", "3") == SHA
    for key_id, name, version in (("k2", "risk", "3"), ("k1", "other", "3"), ("k1", "risk", "4")):
        with pytest.raises(ReceiptInvalid, match="not issued to you"):
            read_receipt(receipt, key_id, name, version)
    sha, expires, tag = receipt.split(".")
    with pytest.raises(ReceiptInvalid, match="not issued to you"):  # another report's hash in the receipt
        read_receipt(f"{'ef' * 32}.{expires}.{tag}", "k1", "risk", "3")
    with pytest.raises(ReceiptInvalid, match="not issued to you"):  # a later expiry
        read_receipt(f"{sha}.{int(expires) + 3600}.{tag}", "k1", "risk", "3")
    with pytest.raises(ReceiptInvalid, match="expired"):
        read_receipt(issue_receipt("k1", "risk", "3", SHA, now=time.time() - 5 * 3600), "k1", "risk", "3")
    for bad in (None, "", SHA, f"{SHA}.x.y"):  # a bare hash copied from anywhere is no receipt
        with pytest.raises(ReceiptInvalid, match="receipt is required"):
            read_receipt(bad, "k1", "risk", "3")


def test_an_approval_verifies_only_for_its_version_files_report_and_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = sign_approval("risk", "2", source="models:/m-1", digest="d" * 64, report_sha256=SHA, scope="platform")
    tags = {"review_status": "approved", "review.report_sha256": SHA, APPROVAL_TAG: signed}
    assert approval_problem(tags, "risk", "2", source="models:/m-1", digest="d" * 64) is None
    assert "files changed" in approval_problem(tags, "risk", "2", source="models:/m-1", digest="e" * 64)
    assert "does not verify" in approval_problem(tags, "risk", "3", source="models:/m-1")  # tag copied to v3
    assert "does not verify" in approval_problem(tags, "risk", "2", source="models:/m-2")  # another model's files
    assert "does not verify" in approval_problem({**tags, "review.report_sha256": "ef" * 32}, "risk", "2", source="models:/m-1")
    assert "pending" in approval_problem({k: v for k, v in tags.items() if k != "review_status"}, "risk", "2",
                                         source="models:/m-1")
    assert "no approval signed" in approval_problem({"review_status": "approved"}, "risk", "2", source="models:/m-1")
    forged = signed.rsplit(" ", 1)[0] + " " + "0" * 64  # review_status=approved and a made-up MAC
    assert "does not verify" in approval_problem({**tags, APPROVAL_TAG: forged}, "risk", "2", source="models:/m-1")
    tenant = sign_approval("risk", "2", source="models:/m-1", digest="d" * 64, report_sha256=SHA, scope="tenant:t1")
    assert "approved for tenant:t1, not platform" in approval_problem({**tags, APPROVAL_TAG: tenant}, "risk", "2",
                                                                       source="models:/m-1")
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "ef" * 32)  # another deployment's key
    assert "does not verify" in approval_problem(tags, "risk", "2", source="models:/m-1")


def test_artifact_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "weights.npz").write_bytes(b"\x00\x01")
    (tmp_path / "MLmodel").write_text("flavors: {}")
    first = artifact_digest(tmp_path)
    assert artifact_digest(tmp_path) == first
    (tmp_path / "artifacts" / "weights.npz").write_bytes(b"\x00\x02")
    assert artifact_digest(tmp_path) != first
    (tmp_path / "artifacts" / "weights.npz").write_bytes(b"\x00\x01")
    (tmp_path / "artifacts" / "weights.npz").rename(tmp_path / "artifacts" / "w.npz")
    assert artifact_digest(tmp_path) != first
