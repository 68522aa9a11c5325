"""Lists (collections) of features (issue 18): a list made by one API key, shared by its random id, and its
entries (a feature of an SAE with the owner's note).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_lists",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="SET NULL",
                                name="fk_feature_lists_key_id_api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_feature_lists"),
    )
    op.create_index("ix_feature_lists_key_id", "feature_lists", ["key_id"])
    op.create_table(
        "feature_list_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.String(length=16), nullable=False),
        sa.Column("sae_id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["feature_lists.id"], ondelete="CASCADE",
                                name="fk_feature_list_entries_list_id_feature_lists"),
        sa.ForeignKeyConstraint(["sae_id"], ["saes.id"], ondelete="CASCADE",
                                name="fk_feature_list_entries_sae_id_saes"),
        sa.PrimaryKeyConstraint("id", name="pk_feature_list_entries"),
        sa.UniqueConstraint("list_id", "sae_id", "feature", name="uq_feature_list_entries_list_id_sae_id_feature"),
    )
    op.create_index("ix_feature_list_entries_list_id", "feature_list_entries", ["list_id"])
    op.create_index("ix_feature_list_entries_sae_id", "feature_list_entries", ["sae_id"])


def downgrade() -> None:
    op.drop_index("ix_feature_list_entries_sae_id", table_name="feature_list_entries")
    op.drop_index("ix_feature_list_entries_list_id", table_name="feature_list_entries")
    op.drop_table("feature_list_entries")
    op.drop_index("ix_feature_lists_key_id", table_name="feature_lists")
    op.drop_table("feature_lists")
