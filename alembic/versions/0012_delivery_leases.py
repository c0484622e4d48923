"""delivery leases (no transaction across a send), bounded throttling, expired run events

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A window claims its deliveries in one short statement and sends with no
        -- transaction open (jobs/delivery.py): `claim` names the window, `claimed_until` is
        -- when the claim lapses by itself (a dead worker's deliveries come back then); the
        -- record writes only rows still pending and still carrying its claim. No default:
        -- adding them rewrites nothing, whatever the size of `deliveries`.
        ALTER TABLE deliveries ADD COLUMN claim uuid, ADD COLUMN claimed_until timestamptz;
        -- Throttled answers (429) of a delivery: they spend no attempt, and at
        -- DELIVERY_MAX_THROTTLES the delivery fails with reason `throttled`. A constant
        -- default adds the column without rewriting the table.
        ALTER TABLE deliveries ADD COLUMN throttles integer NOT NULL DEFAULT 0;

        -- Attempts are now counted when a window claims a delivery, before the send:
        -- sends that an earlier release counted apart (0010) are folded into `attempts`.
        -- The table stays, empty, until no worker of that release can run (a worker of
        -- the previous release still reads it while a deploy replaces it).
        UPDATE deliveries d SET attempts = d.attempts + u.sends
        FROM delivery_unrecorded_sends u
        WHERE d.run_id = u.run_id AND d.position = u.position AND d.status = 'pending';
        DELETE FROM delivery_unrecorded_sends;

        -- A run event given up (EVENTS_RETRY_HOURS) while a later event of its run was
        -- still to be sent: never sent afterwards, so that the later one may go without
        -- ever being overtaken (jobs/run_events.py).
        ALTER TABLE run_events DROP CONSTRAINT run_events_status_check;
        ALTER TABLE run_events ADD CONSTRAINT run_events_status_check
            CHECK (status IN ('pending', 'delivered', 'unsent', 'expired'));
        CREATE OR REPLACE VIEW ops_undelivered_events AS
        SELECT
            e.id AS event_id,
            e.run_id,
            r.brand_id,
            r.campaign_id,
            e.type,
            e.occurred_at,
            now() - e.occurred_at AS age,
            e.attempts,
            e.last_attempt_at,
            e.last_error,
            e.job_id,
            j.status::text AS job_status,
            CASE WHEN j.status = 'todo' THEN j.scheduled_at END AS next_attempt_at,
            e.status
        FROM run_events e
        JOIN runs r ON r.id = e.run_id
        LEFT JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE e.status IN ('pending', 'expired');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW ops_undelivered_events;
        CREATE VIEW ops_undelivered_events AS
        SELECT
            e.id AS event_id,
            e.run_id,
            r.brand_id,
            r.campaign_id,
            e.type,
            e.occurred_at,
            now() - e.occurred_at AS age,
            e.attempts,
            e.last_attempt_at,
            e.last_error,
            e.job_id,
            j.status::text AS job_status,
            CASE WHEN j.status = 'todo' THEN j.scheduled_at END AS next_attempt_at
        FROM run_events e
        JOIN runs r ON r.id = e.run_id
        LEFT JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE e.status = 'pending';
        UPDATE run_events SET status = 'pending' WHERE status = 'expired';
        ALTER TABLE run_events DROP CONSTRAINT run_events_status_check;
        ALTER TABLE run_events ADD CONSTRAINT run_events_status_check
            CHECK (status IN ('pending', 'delivered', 'unsent'));
        ALTER TABLE deliveries
            DROP COLUMN throttles, DROP COLUMN claimed_until, DROP COLUMN claim;
        """
    )
