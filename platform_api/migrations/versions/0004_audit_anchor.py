"""Tamper-evident audit log: one parent per event, REPLACE/TRUNCATE refused, keyed MACs from here on.

Revision ID: 0004
Revises: 0003

- ``audit_chain``: one append-only row; ``legacy_until`` is the newest event id written
  before this migration (those verify as plain SHA-256, later ones as HMAC-SHA256).
- A unique index on ``audit_events.prev_hash``: two events can never share a parent (a fork
  is refused; the writer retries on the new head). A database whose legacy events already
  hold a fork gets the index only over the keyed events (``id > legacy_until``).
- SQLite: a BEFORE INSERT trigger refuses any insert that would meet an existing id, hash
  or parent (``INSERT OR REPLACE``/``REPLACE`` would otherwise delete the old row without
  firing the DELETE trigger). PostgreSQL: statement-level triggers refuse TRUNCATE.
  ``audit_chain`` gets the same append-only triggers.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: ``{keyed}`` is empty, or `` AND id > N`` where the unique parent is partial (a legacy fork),
#: so that the lookup uses that index.
_SQLITE_NO_OVERWRITE = (
    "CREATE TRIGGER audit_no_overwrite BEFORE INSERT ON audit_events "
    "WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id) "
    "OR EXISTS (SELECT 1 FROM audit_events WHERE hash = NEW.hash) "
    "OR EXISTS (SELECT 1 FROM audit_events WHERE prev_hash = NEW.prev_hash{keyed}) "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END"
)
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER audit_chain_no_overwrite BEFORE INSERT ON audit_chain "
    "WHEN EXISTS (SELECT 1 FROM audit_chain) "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
)
_PG_TRIGGERS = (
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
)


def upgrade() -> None:
    bind = op.get_bind()
    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("legacy_until", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    legacy_until = bind.scalar(sa.text("SELECT COALESCE(MAX(id), 0) FROM audit_events")) or 0
    op.bulk_insert(chain, [{"id": 1, "legacy_until": legacy_until,
                            "created_at": datetime.now(UTC).replace(tzinfo=None)}])
    forked = bind.scalar(sa.text("SELECT prev_hash FROM audit_events GROUP BY prev_hash HAVING COUNT(*) > 1 LIMIT 1"))
    where = sa.text(f"id > {int(legacy_until)}") if forked is not None else None
    op.create_index("uq_audit_events_prev_hash", "audit_events", ["prev_hash"], unique=True,
                    sqlite_where=where, postgresql_where=where)
    if bind.dialect.name == "postgresql":
        statements = _PG_TRIGGERS
    else:
        keyed = f" AND id > {int(legacy_until)}" if forked is not None else ""
        statements = (_SQLITE_NO_OVERWRITE.format(keyed=keyed), *_SQLITE_TRIGGERS)
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_truncate ON audit_events")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_no_overwrite")
    op.drop_index("uq_audit_events_prev_hash", table_name="audit_events")
    op.drop_table("audit_chain")
