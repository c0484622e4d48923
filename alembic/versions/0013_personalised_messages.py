"""personalised messages: campaigns' html_body, recipients' data (delivery_data), its erasure

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The HTML part of an e-mail campaign: a Liquid template like subject and body.
        ALTER TABLE campaigns ADD COLUMN html_body text;

        -- The recipient's `data` of a publish (patient data), beside its delivery: only
        -- for deliveries that have some and are to be sent (a skipped one is never sent
        -- nor retried). Apart from `deliveries`, whose rows every claim and record
        -- rewrites (with the data inside, 1.5x the WAL), and erased by DELETE by run,
        -- 5x cheaper than an UPDATE of the deliveries (ADR 0060, bench/data_erasure.py).
        CREATE TABLE delivery_data (
            run_id uuid NOT NULL,
            position integer NOT NULL,
            data jsonb NOT NULL,
            PRIMARY KEY (run_id, position)
        );

        -- Whether some delivery of the run holds `data`, and when the maintenance erased
        -- it (DELIVERY_DATA_DAYS after the run ended; jobs/retention.py). A constant
        -- default: no rewrite of `runs`.
        ALTER TABLE runs ADD COLUMN with_data boolean NOT NULL DEFAULT false,
                         ADD COLUMN data_erased_at timestamptz;
        -- What the erasure looks for: runs with data not erased yet, by the end of the
        -- run. Runs without data are not in it, so it stays as small as a week of runs.
        CREATE INDEX runs_data_to_erase_idx ON runs (completed_at)
            WHERE with_data AND data_erased_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX runs_data_to_erase_idx;
        ALTER TABLE runs DROP COLUMN data_erased_at, DROP COLUMN with_data;
        DROP TABLE delivery_data;
        ALTER TABLE campaigns DROP COLUMN html_body;
        """
    )
