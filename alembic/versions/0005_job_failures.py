"""failures of delivery jobs that were not the database being away

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- procrastinate counts every try of a job, and most failed tries are the database
        -- being away, which must never end a job. This counts the others (a bug, a
        -- constraint): after DELIVERY_MAX_ATTEMPTS of them the job fails its pending
        -- deliveries instead of trying (and maybe sending) again (jobs/tasks.py).
        CREATE TABLE delivery_job_failures (
            job_id      bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
            failures    integer NOT NULL,
            last_error  text NOT NULL,
            failed_at   timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE delivery_job_failures")
