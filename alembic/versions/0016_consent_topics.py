"""consent by topic: campaign topics, topic-scoped suppressions, one outbox for every event

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-06

0013 to 0015 belong to branches merged beside this one: whoever merges re-chains
`down_revision` onto the last of them.
"""

from alembic import op

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None

TOPIC = "'^[a-z0-9_-]{1,64}$'"


def upgrade() -> None:
    op.execute(
        f"""
        -- A campaign with a topic is subscription mail (a newsletter); one without is
        -- service mail (a care reminder). Set at create, or by PATCH while a draft.
        ALTER TABLE campaigns ADD COLUMN topic text CHECK (topic ~ {TOPIC});

        -- A suppression is brand-wide (topic '') or of one topic. '' rather than NULL so
        -- that the primary key holds it and keyset pages order by it plainly. `run_id`:
        -- the run whose message carried the unsubscribe link that was used. (`source`,
        -- who added it, is 0014's.)
        -- Constant defaults: no rewrite of the table; the new key's index is built once.
        ALTER TABLE suppressions
            ADD COLUMN topic text NOT NULL DEFAULT ''
                CHECK (topic = '' OR topic ~ {TOPIC}),
            ADD COLUMN run_id uuid,
            DROP CONSTRAINT suppressions_pkey,
            ADD PRIMARY KEY (brand_id, address, topic);

        -- The outbox of run events becomes the outbox of every event POSTed to
        -- EVENTS_WEBHOOK_URL. `stream` orders events: those of one stream are sent one at
        -- a time, oldest first (`run:<run_id>` for a run's, `brand:<brand_id>` for a
        -- brand's suppressions); `run_id` stays for run events.
        ALTER TABLE run_events RENAME TO events;
        ALTER INDEX run_events_pkey RENAME TO events_pkey;
        ALTER INDEX run_events_run_id_seq_idx RENAME TO events_run_id_seq_idx;
        ALTER INDEX run_events_pending_idx RENAME TO events_pending_idx;
        ALTER SEQUENCE run_events_seq_seq RENAME TO events_seq_seq;
        ALTER TABLE events RENAME CONSTRAINT run_events_run_id_fkey TO events_run_id_fkey;
        ALTER TABLE events RENAME CONSTRAINT run_events_status_check TO events_status_check;
        ALTER TABLE events ALTER COLUMN run_id DROP NOT NULL;
        ALTER TABLE events ADD COLUMN stream text;
        UPDATE events SET stream = 'run:' || run_id;
        ALTER TABLE events ALTER COLUMN stream SET NOT NULL;
        ALTER TABLE events DROP CONSTRAINT run_events_type_check;
        ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (
            type IN ('run.started', 'run.completed', 'run.cancelled', 'suppression.created')
        );
        CREATE INDEX events_stream_pending_idx ON events (stream, seq) WHERE status = 'pending';

        DROP VIEW ops_undelivered_events;
        CREATE VIEW ops_undelivered_events AS
        SELECT
            e.id AS event_id,
            e.run_id,
            coalesce(r.brand_id, e.data->>'brand_id') AS brand_id,
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
            e.status,
            e.stream
        FROM events e
        LEFT JOIN runs r ON r.id = e.run_id
        LEFT JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE e.status IN ('pending', 'expired');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW ops_undelivered_events;
        -- The older release sends run events by run (send_run_events): the jobs still to
        -- run are handed back to it; those of other streams, and their events, go.
        UPDATE procrastinate_jobs
        SET task_name = 'send_run_events',
            args = jsonb_build_object('run_id', substr(args->>'stream', 5))
        WHERE task_name = 'send_events' AND status = 'todo' AND args->>'stream' LIKE 'run:%';
        DELETE FROM procrastinate_jobs WHERE task_name = 'send_events' AND status = 'todo';
        DELETE FROM events WHERE run_id IS NULL;
        DROP INDEX events_stream_pending_idx;
        ALTER TABLE events DROP CONSTRAINT events_type_check;
        ALTER TABLE events ADD CONSTRAINT run_events_type_check
            CHECK (type IN ('run.started', 'run.completed', 'run.cancelled'));
        ALTER TABLE events DROP COLUMN stream;
        ALTER TABLE events ALTER COLUMN run_id SET NOT NULL;
        ALTER TABLE events RENAME CONSTRAINT events_status_check TO run_events_status_check;
        ALTER TABLE events RENAME CONSTRAINT events_run_id_fkey TO run_events_run_id_fkey;
        ALTER INDEX events_pending_idx RENAME TO run_events_pending_idx;
        ALTER INDEX events_run_id_seq_idx RENAME TO run_events_run_id_seq_idx;
        ALTER INDEX events_pkey RENAME TO run_events_pkey;
        ALTER SEQUENCE events_seq_seq RENAME TO run_events_seq_seq;
        ALTER TABLE events RENAME TO run_events;
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
            CASE WHEN j.status = 'todo' THEN j.scheduled_at END AS next_attempt_at,
            e.status
        FROM run_events e
        JOIN runs r ON r.id = e.run_id
        LEFT JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE e.status IN ('pending', 'expired');

        -- Topic suppressions have no place in the older key: they go, brand-wide ones stay.
        DELETE FROM suppressions WHERE topic <> '';
        ALTER TABLE suppressions
            DROP CONSTRAINT suppressions_pkey,
            ADD PRIMARY KEY (brand_id, address),
            DROP COLUMN run_id,
            DROP COLUMN topic;
        ALTER TABLE campaigns DROP COLUMN topic;
        """
    )
