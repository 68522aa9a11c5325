"""SAE sets: several SAEs may sit on one layer of a model (of several widths or sparsities), each in a named set;
an SAE is known by its model and its id (slug), unique within the model.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("saes") as batch:  # batch: SQLite rebuilds the table to drop a constraint
        batch.add_column(sa.Column("sae_set", sa.String(length=64), nullable=False, server_default="default"))
        batch.drop_constraint("uq_saes_model_id_layer", type_="unique")
        batch.create_index("ix_saes_model_id_layer", ["model_id", "layer"])


def downgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_index("ix_saes_model_id_layer")
        batch.create_unique_constraint("uq_saes_model_id_layer", ["model_id", "layer"])
        batch.drop_column("sae_set")
