"""Audit retention: archived segments are recorded, and only archived events may leave the live table.

Revision ID: 0006
Revises: 0005

- ``audit_archives``: one append-only row per archived segment (first/last id, count, the
  chain's ends, the segment's name and sha256, a MAC under the audit key). UPDATE, DELETE
  and TRUNCATE are refused, and so is a record that does not start after the newest one.
- ``audit_events``' DELETE trigger now lets a row go only when its id is at or below the
  newest record's ``last_id`` (the record is inserted in the same transaction), oldest
  first: on SQLite no older row may remain (rows go in id order); on PostgreSQL a
  statement-level trigger refuses a DELETE of archived rows that leaves an older row
  behind. The row triggers keep their names (``audit_no_delete``, ``audit_append_only``).
  UPDATE, TRUNCATE and the overwrite guards are unchanged.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_REFUSE = "SELECT RAISE(ABORT, 'audit log is append-only')"
_SQLITE_UP = (
    "DROP TRIGGER IF EXISTS audit_no_delete",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_events "
    "WHEN OLD.id > COALESCE((SELECT MAX(last_id) FROM audit_archives), 0) "
    "OR EXISTS (SELECT 1 FROM audit_events WHERE id < OLD.id) "
    f"BEGIN {_REFUSE}; END",
    f"CREATE TRIGGER audit_archives_no_update BEFORE UPDATE ON audit_archives BEGIN {_REFUSE}; END",
    f"CREATE TRIGGER audit_archives_no_delete BEFORE DELETE ON audit_archives BEGIN {_REFUSE}; END",
    "CREATE TRIGGER audit_archives_in_order BEFORE INSERT ON audit_archives "
    "WHEN NEW.first_id <= COALESCE((SELECT MAX(last_id) FROM audit_archives), 0) OR NEW.last_id < NEW.first_id "
    f"BEGIN {_REFUSE}; END",
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS audit_no_delete",
    f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_events BEGIN {_REFUSE}; END",
)
_PG_UP = (
    """CREATE FUNCTION audit_delete_archived() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR OLD.id > COALESCE((SELECT MAX(last_id) FROM audit_archives), 0) THEN
        RAISE EXCEPTION 'audit log is append-only (only archived events leave: event % is not)', OLD.id;
    END IF;
    RETURN OLD;
END
$$ LANGUAGE plpgsql""",
    """CREATE FUNCTION audit_delete_oldest_first() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_events WHERE id < (SELECT MAX(id) FROM gone
               WHERE id <= COALESCE((SELECT MAX(last_id) FROM audit_archives), 0))) THEN
        RAISE EXCEPTION 'audit log is append-only: archived events leave oldest first';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql""",
    """CREATE FUNCTION audit_archives_in_order() RETURNS trigger AS $$
BEGIN
    IF NEW.first_id <= COALESCE((SELECT MAX(last_id) FROM audit_archives), 0) OR NEW.last_id < NEW.first_id THEN
        RAISE EXCEPTION 'audit log is append-only: archive % - % does not follow the newest', NEW.first_id, NEW.last_id;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql""",
    # one row trigger under the old name, so that whoever drops it (DDL rights) drops both guards
    "DROP TRIGGER audit_append_only ON audit_events",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_delete_archived()",
    "CREATE TRIGGER audit_delete_oldest_first AFTER DELETE ON audit_events REFERENCING OLD TABLE AS gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_delete_oldest_first()",
    "CREATE TRIGGER audit_archives_append_only BEFORE UPDATE OR DELETE ON audit_archives "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_archives_no_truncate BEFORE TRUNCATE ON audit_archives "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_archives_in_order BEFORE INSERT ON audit_archives "
    "FOR EACH ROW EXECUTE FUNCTION audit_archives_in_order()",
)
_PG_DOWN = (
    "DROP TRIGGER IF EXISTS audit_delete_oldest_first ON audit_events",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit_events",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
)
_PG_DROP_FUNCTIONS = (
    "DROP FUNCTION IF EXISTS audit_delete_archived()",
    "DROP FUNCTION IF EXISTS audit_delete_oldest_first()",
    "DROP FUNCTION IF EXISTS audit_archives_in_order()",
)


def upgrade() -> None:
    op.create_table(
        "audit_archives",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("first_id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("first_prev_hash", sa.String(64), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("first_at", sa.String(32), nullable=False),
        sa.Column("last_at", sa.String(32), nullable=False),
        sa.Column("segment", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("archived_at", sa.DateTime(), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    for statement in _PG_UP if op.get_bind().dialect.name == "postgresql" else _SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_DOWN if postgres else _SQLITE_DOWN:
        op.execute(statement)
    op.drop_table("audit_archives")
    if postgres:
        for statement in _PG_DROP_FUNCTIONS:
            op.execute(statement)
