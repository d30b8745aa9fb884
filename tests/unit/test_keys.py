"""Secret keys outside the databases: created once, private, refused when unusable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.errors import SecretKeyError
from experiments.keys import key_path, mac, secret_key, verify_mac


def test_key_is_created_once_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIOVERSE_AUDIT_KEY", raising=False)
    first = secret_key("audit", data_dir=tmp_path)
    assert len(first) == 32
    assert key_path("audit", tmp_path).stat().st_mode & 0o777 == 0o600
    assert secret_key("audit", data_dir=tmp_path) == first
    assert secret_key("gate", data_dir=tmp_path) != first


def test_environment_wins_and_short_or_garbled_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "ab" * 32)
    assert secret_key("gate", data_dir=tmp_path) == bytes.fromhex("ab" * 32)
    assert not key_path("gate", tmp_path).exists()
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "ab" * 8)
    with pytest.raises(SecretKeyError, match="at least 32 bytes"):
        secret_key("gate", data_dir=tmp_path)
    monkeypatch.setenv("BIOVERSE_GATE_KEY", "not a key!")
    with pytest.raises(SecretKeyError, match="neither hex nor base64"):
        secret_key("gate", data_dir=tmp_path)


def test_missing_or_world_readable_key_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIOVERSE_AUDIT_KEY", raising=False)
    with pytest.raises(SecretKeyError, match="no audit key"):
        secret_key("audit", data_dir=tmp_path, create=False)
    secret_key("audit", data_dir=tmp_path)
    os.chmod(key_path("audit", tmp_path), 0o644)
    with pytest.raises(SecretKeyError, match="readable by others"):
        secret_key("audit", data_dir=tmp_path)


def test_mac_depends_on_key_and_message() -> None:
    key, other = b"k" * 32, b"o" * 32
    tag = mac(key, "cardiac-risk|3")
    assert verify_mac(key, "cardiac-risk|3", tag)
    assert not verify_mac(other, "cardiac-risk|3", tag)
    assert not verify_mac(key, "cardiac-risk|4", tag)
    assert not verify_mac(key, "cardiac-risk|3", "")


def test_processes_creating_the_key_at_once_all_get_the_same_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.delenv("BIOVERSE_AUDIT_KEY", raising=False)
    with multiprocessing.get_context("fork").Pool(8) as pool:
        keys = pool.map(_audit_key, [tmp_path] * 32, chunksize=1)
    assert len(set(keys)) == 1
    assert not [p for p in key_path("audit", tmp_path).parent.iterdir() if p.name.startswith(".")]


def _audit_key(data_dir: Path) -> bytes:
    return secret_key("audit", data_dir=data_dir)
