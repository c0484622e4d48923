"""run events (outbox), retries of the failed, provider feedback on deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- A retry publishes the failed deliveries of a run again, as a new run.
        ALTER TABLE runs ADD COLUMN retry_of uuid REFERENCES runs (id);

        -- What the provider said happened after the send (POST .../providers/*/events).
        -- No CHECK: adding one would scan the whole (large) table under an exclusive
        -- lock; the only writer (db/outcomes.py) takes the values from a Literal type.
        ALTER TABLE deliveries
            ADD COLUMN outcome        text,  -- delivered | bounced | complained
            ADD COLUMN outcome_at     timestamptz,
            ADD COLUMN outcome_detail text;

        -- The outbox of run status changes: a row is written in the transaction that
        -- changes the run's status, together with the procrastinate job (`job_id`)
        -- that POSTs it to EVENTS_WEBHOOK_URL. `seq` orders the events of a run: they
        -- are written under the run's row lock, so in the order the changes commit.
        CREATE TABLE run_events (
            id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            seq             bigint GENERATED ALWAYS AS IDENTITY,
            run_id          uuid NOT NULL REFERENCES runs (id),
            type            text NOT NULL
                            CHECK (type IN ('run.started', 'run.completed', 'run.cancelled')),
            occurred_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            data            jsonb NOT NULL,  -- the run as the API showed it at that moment
            job_id          bigint,          -- the send_run_events job deferred with it
            -- pending: to be sent (and retried); delivered: a 2xx came back;
            -- unsent: no EVENTS_WEBHOOK_URL was configured when its job ran.
            status          text NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'delivered', 'unsent')),
            attempts        integer NOT NULL DEFAULT 0,
            last_attempt_at timestamptz,
            last_error      text,
            delivered_at    timestamptz
        );
        CREATE INDEX run_events_run_id_seq_idx ON run_events (run_id, seq);
        CREATE INDEX run_events_pending_idx ON run_events (occurred_at) WHERE status = 'pending';

        -- Events not delivered (yet), oldest first with their job: `todo` and a
        -- `next_attempt_at` while retried, `failed` once given up (EVENTS_RETRY_HOURS).
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
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW ops_undelivered_events;
        DROP TABLE run_events;
        ALTER TABLE deliveries
            DROP COLUMN outcome, DROP COLUMN outcome_at, DROP COLUMN outcome_detail;
        ALTER TABLE runs DROP COLUMN retry_of;
        """
    )
