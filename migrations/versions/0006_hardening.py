"""Hardening for a shared deployment (issue 17): server-side browser sessions (sign-out ends them, expiry kept here),
admin keys, explanations owned by the key that wrote them with a history of edits, and saved results that record
who saved them and how large they are (for quotas).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean(), nullable=False, server_default="0"))
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE",
                                name="fk_browser_sessions_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_browser_sessions"),
    )
    op.create_index("ix_browser_sessions_key_id", "browser_sessions", ["key_id"])
    with op.batch_alter_table("explanations") as batch:
        batch.add_column(sa.Column("key_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_explanations_key_id_api_keys", "api_keys", ["key_id"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index("ix_explanations_key_id", ["key_id"])
    op.create_table(
        "explanation_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("explanation_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("old_text", sa.Text(), nullable=False),
        sa.Column("new_text", sa.Text(), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("editor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="SET NULL",
                                name="fk_explanation_edits_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_explanation_edits"),
    )
    op.create_index("ix_explanation_edits_explanation_id", "explanation_edits", ["explanation_id"])
    with op.batch_alter_table("saved_results") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=80), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.Integer(), nullable=True))
        batch.create_index("ix_saved_results_owner_created_at", ["owner", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("saved_results") as batch:
        batch.drop_index("ix_saved_results_owner_created_at")
        batch.drop_column("size_bytes")
        batch.drop_column("owner")
    op.drop_index("ix_explanation_edits_explanation_id", table_name="explanation_edits")
    op.drop_table("explanation_edits")
    with op.batch_alter_table("explanations") as batch:
        batch.drop_index("ix_explanations_key_id")
        batch.drop_constraint("fk_explanations_key_id_api_keys", type_="foreignkey")
        batch.drop_column("key_id")
    op.drop_index("ix_browser_sessions_key_id", table_name="browser_sessions")
    op.drop_table("browser_sessions")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")
