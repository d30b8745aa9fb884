"""Who is calling, for which tenant: API keys and OAuth2 access tokens, and their roles."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from experiments.gate import Identity
from platform_api.errors import KeyRequestInvalid, NotAuthenticated
from platform_api.models import ROLES, ApiKey, Tenant
from platform_api.settings import get_settings

__all__ = [
    "Principal", "PrincipalCache", "TenantPrincipal", "authenticate", "authenticate_cached", "create_key", "decode_access_token",
    "issue_access_token", "issue_token_for", "principal_cache", "revoke", "signing_key",
]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; ``name`` is the key's label: the person (or app) it belongs to."""

    key_id: str
    role: str
    tenant_id: str | None
    name: str = ""

    @property
    def identity(self) -> Identity:
        """The caller as the review gate compares people (``launched_by``, ``review.decided_by``)."""
        return Identity("key", self.name, self.key_id, self.tenant_id)


@dataclass(frozen=True)
class TenantPrincipal(Principal):
    """A caller bound to a tenant, checked once (:func:`platform_api.deps.require_tenant_roles`)."""

    tenant_id: str


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, role: str, tenant_id: str | None, name: str = "", commit: bool = True) -> str:
    """Create a key (and its tenant if new); returns the token, shown only this once.

    Tokens are ``bv_<key id>_<secret>`` with a 256-bit random secret; only its SHA-256 is
    stored (a fast hash suffices for random secrets, unlike passwords). With ``commit``
    false the key is only flushed, for a caller that commits it with its audit event.
    """
    if role not in ROLES:
        raise KeyRequestInvalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if role not in ("admin", "clinical_validator") and not tenant_id:
        raise KeyRequestInvalid(f"a {role} key needs a tenant")
    if tenant_id and session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        session.flush()  # the key's foreign key needs the tenant row first
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    session.add(ApiKey(key_id=key_id, secret_sha256=_sha256(secret), role=role, tenant_id=tenant_id, name=name))
    session.commit() if commit else session.flush()
    return f"bv_{key_id}_{secret}"


class PrincipalCache:
    """Active keys recently checked against the database, by key id, for a few seconds.

    A revocation in this process takes effect at once; one in another process within
    ``ttl`` seconds (``BIOVERSE_API_AUTH_CACHE_SECONDS``; 0 disables the cache). Entries
    are keyed by the SHA-256 of the credential, so no secret is kept in memory.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._data: TTLCache[str, Principal] = TTLCache(maxsize=10_000, ttl=max(ttl, 1e-9))
        self._lock = threading.Lock()

    def get(self, credential: str) -> Principal | None:
        with self._lock:
            return self._data.get(_sha256(credential))

    def put(self, credential: str, principal: Principal) -> None:
        if self.ttl > 0:
            with self._lock:
                self._data[_sha256(credential)] = principal

    def forget(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, p in self._data.items() if p.key_id == key_id]:
                self._data.pop(digest, None)


@functools.cache
def principal_cache() -> PrincipalCache:
    """The process's cache of authenticated callers."""
    return PrincipalCache(get_settings().auth_cache_seconds)


def _check_key(session: Session, key_id: str, secret: str | None) -> Principal:
    """The active key ``key_id`` (and, given ``secret``, only if it matches)."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if key is None or key.revoked_at is not None:
        raise NotAuthenticated("unknown or revoked API key")
    if secret is not None and not hmac.compare_digest(key.secret_sha256, _sha256(secret)):
        raise NotAuthenticated("unknown or revoked API key")
    return Principal(key.key_id, key.role, key.tenant_id, key.name or "")


def _credential(token: str) -> tuple[str, str, str | None]:
    """(cache key, key id, secret or None) of a bearer token: an API key or an access token.

    Raises:
        NotAuthenticated: malformed, expired or badly signed.
    """
    if token.startswith("bv_"):
        parts = token.split("_", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise NotAuthenticated("malformed API key")
        return token, parts[1], parts[2]
    if token.count(".") == 2:
        claims = decode_access_token(token)
        return f"key:{claims['sub']}", claims["sub"], None
    raise NotAuthenticated("malformed credentials: expected an API key (bv_...) or an OAuth2 access token")


def authenticate_cached(token: str | None) -> Principal | None:
    """The caller, if it can be told without the database (else None); never blocks."""
    if not token:
        raise NotAuthenticated("credentials required: Authorization: Bearer <api key or access token>")
    cache_key, _, _ = _credential(token)
    return principal_cache().get(cache_key)


def authenticate(session: Session, token: str | None) -> Principal:
    """The caller a bearer token (an API key, or an OAuth2 access token) belongs to.

    Access tokens are checked against their key too, so revoking a key ends its tokens.

    Raises:
        NotAuthenticated: missing, malformed, expired, unknown or revoked.
    """
    cached = authenticate_cached(token)
    if cached is not None:
        return cached
    assert token is not None
    cache_key, key_id, secret = _credential(token)
    principal = _check_key(session, key_id, secret)
    principal_cache().put(cache_key, principal)
    return principal


# ---- OAuth2 client credentials (RFC 6749 §4.4): a key id and secret buy a short-lived JWT ----

ISSUER = "bioverse"


@functools.cache
def signing_key() -> str:
    """``BIOVERSE_API_TOKEN_SECRET``, or a random key kept (mode 0600) in the data dir."""
    settings = get_settings()
    if settings.token_secret:
        return settings.token_secret
    path = settings.data_dir / "oauth-signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def issue_access_token(session: Session, client_id: str, client_secret: str) -> tuple[str, int]:
    """A signed access token (HS256 JWT) for a key's id and secret, and its lifetime in seconds.

    Raises:
        NotAuthenticated: unknown, revoked or wrong secret.
    """
    return issue_token_for(_check_key(session, client_id, client_secret))


def issue_token_for(principal: Principal) -> tuple[str, int]:
    """A signed access token for an authenticated caller, and its lifetime in seconds."""
    import jwt

    lifetime = get_settings().token_lifetime_seconds
    now = int(datetime.now(UTC).timestamp())
    claims = {"iss": ISSUER, "sub": principal.key_id, "role": principal.role, "tenant": principal.tenant_id,
              "iat": now, "exp": now + lifetime, "jti": secrets.token_hex(8)}
    return jwt.encode(claims, signing_key(), algorithm="HS256"), lifetime


def decode_access_token(token: str) -> dict[str, Any]:
    """The claims of a valid access token.

    Raises:
        NotAuthenticated: expired, badly signed or not ours.
    """
    import jwt

    try:
        claims = jwt.decode(token, signing_key(), algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "sub", "iss"]})
    except jwt.ExpiredSignatureError as err:
        raise NotAuthenticated("access token expired; request a new one at /v1/oauth/token") from err
    except jwt.InvalidTokenError as err:
        raise NotAuthenticated("invalid access token") from err
    if not isinstance(claims.get("sub"), str):
        raise NotAuthenticated("invalid access token")
    return claims


def revoke(session: Session, key_id: str, *, commit: bool = True) -> bool:
    """Revoke a key; returns False if there is no such active key (``commit`` as in :func:`create_key`)."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None)))
    if key is None:
        return False
    key.revoked_at = datetime.now(UTC).replace(tzinfo=None)
    session.commit() if commit else session.flush()
    principal_cache().forget(key_id)
    return True
