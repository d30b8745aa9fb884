"""API keys made and revoked from the operator's shell, each change committed with its audit event."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from platform_api.audit import CHAIN_LOCK, record
from platform_api.audit_checkpoints import note_appended
from platform_api.auth import create_key, revoke

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["create_key_audited", "revoke_key_audited"]


@contextlib.contextmanager
def _key_audit(session: Session) -> Iterator[Callable[[str, str | None], None]]:
    """Commit a key change together with its audit event (actor: the OS login that ran the command,
    the only identity a command run with direct database access has); nothing is committed unless audited."""
    recorded: list[str] = []

    def audit(action: str, tenant_id: str | None) -> None:
        record(session, actor=f"os:{getpass.getuser()}"[:32], role="admin", tenant_id=tenant_id, patient_id=None,
               action=action[:64], outcome="ok")
        recorded.append(action)

    with CHAIN_LOCK:
        yield audit
        if recorded:
            session.commit()
    if recorded:
        note_appended(session.get_bind(), len(recorded))


def create_key_audited(session: Session, *, role: str, tenant_id: str | None, name: str) -> str:
    """Create a key and audit it (``key.create:<id>:<role>``) in one commit; returns the token, shown once."""
    with _key_audit(session) as audit:
        token = create_key(session, role=role, tenant_id=tenant_id, name=name, commit=False)
        audit(f"key.create:{token.split('_')[1]}:{role}", tenant_id)
    return token


def revoke_key_audited(session: Session, key_id: str) -> bool:
    """Revoke an active key and audit it (``key.revoke:<id>``) in one commit; False (nothing written) if none."""
    with _key_audit(session) as audit:
        if not revoke(session, key_id, commit=False):
            return False
        audit(f"key.revoke:{key_id}", None)
    return True
