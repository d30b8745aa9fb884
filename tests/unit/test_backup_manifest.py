"""The backup manifest, redaction and chunked encryption (pure parts of platform_api.backup)."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path

import pytest

from platform_api.backup.crypto import CHUNK, decrypt_file, encrypt_file, load_key
from platform_api.backup.errors import BackupError
from platform_api.backup.manifest import (
    FORMAT_VERSION,
    FileEntry,
    Manifest,
    compare_file,
    redact,
    redact_url,
    sha256_file,
    unexpected_files,
)


def test_secrets_are_redacted_and_urls_lose_their_passwords() -> None:
    safe = redact({"api.token_secret": "s3cr3t", "api.metrics_token": "", "database_url": "postgresql+psycopg2://u:pw@h:5432/db",
                   "api.cache_url": "redis://:pw@cache:6379/0", "api.data_dir": Path("/var/lib/bioverse"), "limit": 3})
    assert safe == {"api.token_secret": "***", "api.metrics_token": "", "database_url": "postgresql+psycopg2://u:***@h:5432/db",
                    "api.cache_url": "redis://:***@cache:6379/0", "api.data_dir": "/var/lib/bioverse", "limit": 3}
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "pw" not in json.dumps(safe)


def test_manifest_round_trips_and_refuses_a_newer_format() -> None:
    entry = FileEntry("platform.db.enc", "platform-db", 120, "a" * 64, 100, "b" * 64)
    manifest = Manifest("b1", "2026-12-06T05:00:00+00:00", True, "sqlite", {"x": 1}, [entry], {"twins": 3},
                        {"last_id": 9, "hash": "c" * 64, "events": 9})
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.size == 120 and again.file("platform-db") == entry
    newer = json.loads(manifest.to_json()) | {"format_version": FORMAT_VERSION + 1}
    with pytest.raises(ValueError, match="newer"):
        Manifest.from_json(json.dumps(newer))
    with pytest.raises(ValueError, match="not a BioVerse backup"):
        Manifest.from_json("[]")


def test_compare_names_missing_truncated_and_altered_files() -> None:
    entry = FileEntry("audit.tar", "audit", 10, "a" * 64, 10, "a" * 64)
    assert compare_file(entry, ("a" * 64, 10)) is None
    assert compare_file(entry, None) == "audit.tar: missing"
    assert compare_file(entry, ("a" * 64, 4)) == "audit.tar: truncated (4 of 10 bytes)"
    assert "altered" in str(compare_file(entry, ("b" * 64, 10)))
    assert "altered" in str(compare_file(entry, ("a" * 64, 11)))
    manifest = Manifest("b", "t", False, "sqlite", {}, [entry])
    assert unexpected_files(manifest, ["audit.tar", "manifest.json", "verified.json", "extra.bin"]) == ["extra.bin"]


@pytest.mark.parametrize("size", [0, 1000, CHUNK, CHUNK + 7])
def test_encryption_round_trips_and_every_tampering_fails(tmp_path: Path, size: int) -> None:
    key, plain = secrets.token_bytes(32), tmp_path / "plain"
    plain.write_bytes(secrets.token_bytes(size))
    sealed = tmp_path / "sealed"
    encrypt_file(key, plain, sealed)
    out = io.BytesIO()
    with sealed.open("rb") as stream:
        decrypt_file(key, stream, out)
    assert out.getvalue() == plain.read_bytes()
    data = sealed.read_bytes()
    for broken, why in ((data[:-1], "truncated"), (data + b"x", "extended"), (data[:20] + bytes([data[20] ^ 1]) + data[21:], "authenticate")):
        with pytest.raises(BackupError, match=why):
            decrypt_file(key, io.BytesIO(broken), None)
    with pytest.raises(BackupError, match="does not authenticate"):
        decrypt_file(secrets.token_bytes(32), io.BytesIO(data), None)
    assert sha256_file(plain)[1] == size


def test_dropping_the_last_chunk_of_a_multi_chunk_file_is_caught(tmp_path: Path) -> None:
    key, plain, sealed = secrets.token_bytes(32), tmp_path / "plain", tmp_path / "sealed"
    plain.write_bytes(b"x" * (CHUNK + 10))
    encrypt_file(key, plain, sealed)
    first_chunk_end = 6 + 8 + 5 + CHUNK + 16
    with pytest.raises(BackupError, match="truncated"):
        decrypt_file(key, io.BytesIO(sealed.read_bytes()[:first_chunk_end]), None)


def test_the_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    monkeypatch.delenv("BIOVERSE_BACKUP_KEY", raising=False)
    assert load_key() is None
    with pytest.raises(BackupError, match="encrypted"):
        load_key(required=True)
    (tmp_path / "k").write_text(key.hex())
    assert load_key(tmp_path / "k") == key
    monkeypatch.setenv("BIOVERSE_BACKUP_KEY", key.hex()[:40])
    with pytest.raises(BackupError, match="32 bytes"):
        load_key()
