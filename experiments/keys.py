"""Secret keys kept outside every database: one file per purpose, or an environment variable."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from experiments.errors import SecretKeyError
from experiments.settings import get_settings

__all__ = ["key_path", "mac", "secret_key", "verify_mac"]


_MIN_BYTES = 32


def key_path(purpose: str, data_dir: Path | None = None) -> Path:
    """Where the key for ``purpose`` (``audit``, ``gate``...) lives: ``<data dir>/keys/<purpose>.key``."""
    return (data_dir or get_settings().data_dir) / "keys" / f"{purpose}.key"


def secret_key(purpose: str, *, data_dir: Path | None = None, create: bool = True) -> bytes:
    """The secret key for ``purpose``.

    ``BIOVERSE_<PURPOSE>_KEY`` (base64 or hex, at least 32 bytes) wins; otherwise the key file
    under the data directory, created (0600, 32 random bytes) on first use when ``create``.
    A deployment keeps the file on a different volume than the database it protects, or
    injects the variable from its secret store: whoever can write the database must not be
    able to read the key.

    Raises:
        SecretKeyError: the variable or file is unusable, or missing and ``create`` is false.
    """
    env = f"BIOVERSE_{purpose.upper()}_KEY"
    if value := os.environ.get(env, "").strip():
        return _decode(value, env)
    path = key_path(purpose, data_dir)
    if not path.exists():
        if not create:
            raise SecretKeyError(f"no {purpose} key: set {env} or create {path}")
        _create(path)
    try:
        if path.stat().st_mode & 0o077:
            raise SecretKeyError(f"{path}: key file is readable by others (chmod 600 it)")
        return _decode(path.read_text().strip(), str(path))
    except OSError as err:
        raise SecretKeyError(f"{path}: cannot read key ({err.strerror})") from err


def _create(path: Path) -> None:
    """Write a new key whole, then link it into place: a process racing us reads one key or the other's, never half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(_MIN_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _decode(value: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError as err:
            raise SecretKeyError(f"{where}: key is neither hex nor base64") from err
    if len(raw) < _MIN_BYTES:
        raise SecretKeyError(f"{where}: key must be at least {_MIN_BYTES} bytes")
    return raw


def mac(key: bytes, message: str) -> str:
    """HMAC-SHA256 of ``message`` under ``key``, hex."""
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def verify_mac(key: bytes, message: str, tag: str) -> bool:
    """Constant-time check of a :func:`mac` tag."""
    return hmac.compare_digest(mac(key, message), tag or "")
