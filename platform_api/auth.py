"""API keys and roles: who is calling, for which tenant."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_api.errors import NotAuthenticated
from platform_api.models import ROLES, ApiKey, Tenant

__all__ = ["Principal", "authenticate", "create_key"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    key_id: str
    role: str
    tenant_id: str | None


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, role: str, tenant_id: str | None, name: str = "") -> str:
    """Create a key (and its tenant if new); returns the token, shown only this once.

    Tokens are ``bv_<key id>_<secret>`` with a 256-bit random secret; only its SHA-256 is
    stored (a fast hash suffices for random secrets, unlike passwords).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if role != "admin" and not tenant_id:
        raise ValueError(f"a {role} key needs a tenant")
    if tenant_id and session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        session.flush()  # the key's foreign key needs the tenant row first
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    session.add(ApiKey(key_id=key_id, secret_sha256=_sha256(secret), role=role, tenant_id=tenant_id, name=name))
    session.commit()
    return f"bv_{key_id}_{secret}"


def authenticate(session: Session, token: str | None) -> Principal:
    """The caller a bearer token belongs to.

    Raises:
        NotAuthenticated: missing, malformed, unknown or revoked token.
    """
    if not token:
        raise NotAuthenticated("credentials required: Authorization: Bearer <api key>")
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "bv":
        raise NotAuthenticated("malformed API key")
    key = session.scalar(select(ApiKey).where(ApiKey.key_id == parts[1]))
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.secret_sha256, _sha256(parts[2])):
        raise NotAuthenticated("unknown or revoked API key")
    return Principal(key.key_id, key.role, key.tenant_id)


def revoke(session: Session, key_id: str) -> bool:
    """Revoke a key; returns False if there is no such active key."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None)))
    if key is None:
        return False
    key.revoked_at = datetime.now(timezone.utc).replace(tzinfo=None)
    session.commit()
    return True
