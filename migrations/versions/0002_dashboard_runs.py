"""Dashboard runs: one row per run of the dashboard build job, with its phase, progress and error, so that the web
app can show a build that `saex serve` runs in the background.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_slug", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=True),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("features_written", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_runs")),
    )
    with op.batch_alter_table("dashboard_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_runs_model_slug"), ["model_slug"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dashboard_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_runs_model_slug"))

    op.drop_table("dashboard_runs")
