"""AES-256-GCM in 4 MiB chunks: each chunk authenticated with its index and a last-chunk flag,
so an altered, reordered, truncated or extended file fails to decrypt (docs/backup.md)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from platform_api.backup.errors import BackupError

__all__ = ["CHUNK", "KEY_ENV", "decrypt_file", "encrypt_file", "load_key"]

KEY_ENV = "BIOVERSE_BACKUP_KEY"
CHUNK = 4 << 20
_MAGIC = b"BVBK1\n"
_TAG = 16


def _decode(value: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError as err:
        raise BackupError(f"{where}: the backup key is not hex (make one with `openssl rand -hex 32`)") from err
    if len(raw) != 32:
        raise BackupError(f"{where}: the backup key must be 32 bytes (AES-256), not {len(raw)}")
    return raw


def load_key(key_file: Path | None = None, *, required: bool = False) -> bytes | None:
    """The backup key: ``key_file`` (64 hex digits: 32 bytes), else ``BIOVERSE_BACKUP_KEY``, else ``None``.

    Raises:
        BackupError: the key is unreadable or malformed, or ``required`` and there is none.
    """
    if key_file is not None:
        try:
            return _decode(key_file.read_text(), str(key_file))
        except OSError as err:
            raise BackupError(f"{key_file}: cannot read the backup key ({err.strerror})") from err
    if value := os.environ.get(KEY_ENV, "").strip():
        return _decode(value, KEY_ENV)
    if required:
        raise BackupError(f"this backup is encrypted: give --key-file or set {KEY_ENV}")
    return None


def _aad(index: int, last: bool) -> bytes:
    return _MAGIC + struct.pack(">Q?", index, last)


def encrypt_file(key: bytes, source: Path, target: Path) -> None:
    """Encrypt ``source`` into ``target``: magic, 8-byte nonce prefix, then (length, last flag, ciphertext+tag) chunks."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aes, prefix = AESGCM(key), os.urandom(8)
    size = source.stat().st_size
    with source.open("rb") as src, target.open("wb") as out:
        out.write(_MAGIC + prefix)
        index, done = 0, 0
        while True:
            chunk = src.read(CHUNK)
            done += len(chunk)
            last = done >= size
            sealed = aes.encrypt(prefix + struct.pack(">I", index), chunk, _aad(index, last))
            out.write(struct.pack(">I?", len(sealed), last) + sealed)
            index += 1
            if last:
                break


def decrypt_file(key: bytes, source: BinaryIO, target: BinaryIO | None) -> None:
    """Decrypt (and authenticate) a stream written by :func:`encrypt_file`; ``target`` None only checks.

    Raises:
        BackupError: wrong key, or the file was altered, truncated or extended.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = source.read(len(_MAGIC) + 8)
    if len(head) != len(_MAGIC) + 8 or not head.startswith(_MAGIC):
        raise BackupError("not an encrypted backup file")
    aes, prefix, index = AESGCM(key), head[len(_MAGIC):], 0
    while True:
        raw = source.read(5)
        if len(raw) != 5:
            raise BackupError("truncated: the last chunk is missing")
        length, last = struct.unpack(">I?", raw)
        sealed = source.read(length)
        if len(sealed) != length or length < _TAG:
            raise BackupError("truncated inside a chunk")
        nonce = prefix + struct.pack(">I", index)
        try:
            plain = aes.decrypt(nonce, sealed, _aad(index, last))
        except InvalidTag:
            raise BackupError(f"chunk {index} does not authenticate (wrong key, or altered)") from None
        if target is not None:
            target.write(plain)
        index += 1
        if last:
            if source.read(1):
                raise BackupError("data after the last chunk (extended)")
            return
