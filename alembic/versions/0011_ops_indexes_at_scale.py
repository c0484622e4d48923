"""ops views that read the same rows however many runs and deliveries there are

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- docs/ops.md's "how is every run doing" asks for runs `scheduled`, `queued` or
        -- `running`, or ended in the last day. The index of runs not ended left `scheduled`
        -- out (it predates scheduling), so that query read every run ever made.
        DROP INDEX runs_not_ended_idx;
        CREATE INDEX runs_not_ended_idx ON runs (created_at)
            WHERE status IN ('scheduled', 'queued', 'running');

        -- ops_delivery_failures reads, per run, the deliveries that failed or wait for a
        -- retry after an error: a few among many. Without this index it read every
        -- delivery of the run (100,000 for 500 failures: 17-23 ms, more on colder pages);
        -- with it, just those. Created on every partition, and on the ones made later.
        CREATE INDEX deliveries_errors_idx ON deliveries (run_id)
            WHERE status = 'failed' OR (status = 'pending' AND last_error IS NOT NULL);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX deliveries_errors_idx;
        DROP INDEX runs_not_ended_idx;
        CREATE INDEX runs_not_ended_idx ON runs (created_at)
            WHERE status IN ('queued', 'running');
        """
    )
