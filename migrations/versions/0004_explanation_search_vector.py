"""Explanation search at 300,000 explanations: on Postgres the search vector is a stored generated column with the
GIN index on it, so ranking reads each match's vector instead of parsing its text again (a common word matched
~60% of 295K explanations, and ranking them re-parsed every one: 1.5 s). SQLite searches with LIKE, unchanged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE explanations ADD COLUMN text_search tsvector "
               "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED")
    op.execute("DROP INDEX IF EXISTS ix_explanations_text_fts")
    op.execute("CREATE INDEX ix_explanations_text_search ON explanations USING gin (text_search)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_explanations_text_search")
    op.execute("ALTER TABLE explanations DROP COLUMN text_search")
    op.execute("CREATE INDEX ix_explanations_text_fts ON explanations USING gin (to_tsvector('english', text))")
