"""The pure parts of audit retention: segment encoding, signed manifests, names, the cutoff, the folder store."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from platform_api.audit import GENESIS, event_mac
from platform_api.audit_archive import cutoff, decode_segment, encode_segment, manifest_name, segment_name
from platform_api.audit_archive_store import (
    AuditArchiveError,
    LocalStore,
    S3Store,
    manifest_problem,
    open_store,
    retention_settings,
    sign_manifest,
)

KEY = bytes.fromhex("ab" * 32)


def _rows(n: int, start: int = 1) -> list[tuple]:  # type: ignore[type-arg]
    rows, prev = [], GENESIS
    for i in range(start, start + n):
        fields = {"at": datetime(2019, 1, 1, 12, 0, 0, i), "actor": "k1", "role": "app", "tenant_id": "t1",
                  "patient_id": None if i % 2 else f"p{i}", "action": "twin.read", "outcome": "ok"}
        digest = event_mac(KEY, prev, fields)
        rows.append((i, prev, digest, *fields.values()))
        prev = digest
    return rows


def test_a_segment_round_trips_exactly_and_its_bytes_depend_only_on_the_rows() -> None:
    rows = _rows(5)
    data, manifest = encode_segment(rows)
    assert decode_segment(data) == rows
    assert encode_segment(rows)[0] == data  # a rerun rewrites the segment identically
    first_line = json.loads(gzip.decompress(data).splitlines()[0])
    assert first_line["prev_hash"] == GENESIS and first_line["at"] == "2019-01-01T12:00:00.000001"
    assert set(first_line) == {"id", "prev_hash", "hash", "at", "actor", "role", "tenant_id", "patient_id", "action", "outcome"}
    assert manifest["first_id"] == 1 and manifest["last_id"] == 5 and manifest["events"] == 5
    assert manifest["first_prev_hash"] == GENESIS and manifest["last_hash"] == rows[-1][2]
    assert manifest["segment"] == "segment-000000000001-000000000005.jsonl.gz" and manifest["bytes"] == len(data)


def test_a_signed_manifest_verifies_and_any_change_or_another_key_is_named() -> None:
    _, manifest = encode_segment(_rows(3))
    signed = sign_manifest(manifest, KEY)
    assert manifest_problem(signed, KEY) == ""
    assert "does not verify" in manifest_problem({**signed, "sha256": "0" * 64}, KEY)
    assert "does not verify" in manifest_problem(signed, bytes(32))
    assert manifest_problem({"first_id": 1}, KEY) == "not a readable manifest"
    assert manifest_problem(None, KEY) == "not a readable manifest"


def test_an_unreadable_segment_is_a_domain_error() -> None:
    with pytest.raises(AuditArchiveError, match="not a readable segment"):
        decode_segment(b"not gzip")
    with pytest.raises(AuditArchiveError, match="not a readable segment"):
        decode_segment(gzip.compress(b'{"id": 1}\n'))


def test_names_sort_in_chain_order() -> None:
    names = [segment_name(f, last) for f, last in ((1, 9), (10, 99), (100, 1000))]
    assert names == sorted(names)
    assert manifest_name(names[0]) == "segment-000000000001-000000000009.manifest.json"


def test_the_cutoff_is_the_retention_age_ago_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    retention_settings.cache_clear()
    monkeypatch.delenv("BIOVERSE_API_AUDIT_RETENTION_DAYS", raising=False)
    assert abs(cutoff() - (now - timedelta(days=2557))) < timedelta(minutes=1)  # 7 years
    monkeypatch.setenv("BIOVERSE_API_AUDIT_RETENTION_DAYS", "30")
    retention_settings.cache_clear()
    assert abs(cutoff() - (now - timedelta(days=30))) < timedelta(minutes=1)
    assert abs(cutoff(older_than_days=1) - (now - timedelta(days=1))) < timedelta(minutes=1)
    aware = datetime(2020, 1, 1, 1, tzinfo=UTC)
    assert cutoff(before=aware) == datetime(2020, 1, 1, 1)
    retention_settings.cache_clear()


def test_the_folder_store_writes_whole_objects_and_lists_only_them(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    assert store.names() == [] and store.get("x") is None
    store.put("b", b"2")
    store.put("a", b"1")
    store.put("a", b"one")
    assert store.names() == ["a", "b"] and store.get("a") == b"one"
    store.delete("b")
    store.delete("b")
    assert store.names() == ["a"]
    assert not [p for p in (tmp_path / "archive").iterdir() if p.name.startswith(".")]  # no temporary left


def test_open_store_reads_folders_and_s3_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    s3 = open_store("s3://bucket/audit/prod")
    assert isinstance(s3, S3Store) and str(s3) == "s3://bucket/audit/prod/"
    with pytest.raises(AuditArchiveError, match="needs a bucket"):
        open_store("s3:///prefix")
