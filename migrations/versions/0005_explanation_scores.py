"""Automatic explanations and their scores: an explanation's method ("human", "baseline" or "llm:<model>"), the
language model and prompt version that wrote it, its scores per scorer (delphi's detection, fuzzing, embedding),
and a table of explanation embeddings for semantic search.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("explanations") as batch:
        batch.add_column(sa.Column("method", sa.String(length=120), nullable=False, server_default="human"))
        batch.add_column(sa.Column("prompt_version", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("scores", sa.JSON(), nullable=True))
        batch.create_index("ix_explanations_sae_id_feature", ["sae_id", "feature"])
    # what was written before had only a source: "human", or "automatic" (imports): keep it readable as a method
    op.execute("UPDATE explanations SET method = 'imported' WHERE source <> 'human'")
    op.create_table(
        "explanation_embeddings",
        sa.Column("explanation_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=120), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),  # float16 LE, unit length
        sa.ForeignKeyConstraint(["explanation_id"], ["explanations.id"], ondelete="CASCADE",
                                name="fk_explanation_embeddings_explanation_id_explanations"),
        sa.PrimaryKeyConstraint("explanation_id", name="pk_explanation_embeddings"),
    )


def downgrade() -> None:
    op.drop_table("explanation_embeddings")
    with op.batch_alter_table("explanations") as batch:
        batch.drop_index("ix_explanations_sae_id_feature")
        batch.drop_column("scores")
        batch.drop_column("prompt_version")
        batch.drop_column("method")
