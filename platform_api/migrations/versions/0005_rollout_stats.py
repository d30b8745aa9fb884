"""Staged rollouts' per-version live statistics: one row per flushed slice of a scoring process's counts.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_stats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(20), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("risks", sa.JSON(), nullable=False),
    )
    op.create_index("ix_rollout_stats_rollout_id", "rollout_stats", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_stats_rollout_id", table_name="rollout_stats")
    op.drop_table("rollout_stats")
