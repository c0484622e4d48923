"""scheduled runs (send_at) and quiet hours (deliveries that wait until not_before)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# ops_run_progress (0004) gains `scheduled_for` at its end.
RUN_PROGRESS = """
CREATE {replace} VIEW ops_run_progress AS
SELECT
    r.id AS run_id,
    r.brand_id,
    r.campaign_id,
    c.name AS campaign_name,
    c.channel,
    r.status,
    r.total_recipients AS total,
    r.sent_count AS sent,
    r.failed_count AS failed,
    r.skipped_count AS skipped,
    r.total_recipients - r.sent_count - r.failed_count - r.skipped_count AS pending,
    r.created_at,
    r.started_at,
    r.completed_at,
    now() - r.created_at AS age,
    coalesce(r.completed_at, now()) - r.started_at AS duration,
    round(
        (r.sent_count + r.failed_count)::numeric
        / nullif(extract(epoch FROM coalesce(r.completed_at, now()) - r.started_at), 0),
        1
    ) AS messages_per_second{extra}
FROM runs r
JOIN campaigns c ON c.id = r.campaign_id;
"""

# ops_stalled_runs (0004) gains `waiting_until`: a run whose pending deliveries all wait
# for their recipients' quiet hours to end is idle, not stalled (docs/ops.md).
STALLED_RUNS = """
CREATE {replace} VIEW ops_stalled_runs AS
SELECT
    r.id AS run_id,
    r.brand_id,
    r.campaign_id,
    r.status,
    r.total_recipients AS total,
    r.total_recipients - r.sent_count - r.failed_count - r.skipped_count AS pending,
    r.created_at,
    r.started_at,
    last.at AS last_progress_at,
    now() - coalesce(last.at, r.started_at, r.created_at) AS idle_for{extra}
FROM runs r
LEFT JOIN LATERAL (
    SELECT max(d.updated_at) AS at{lateral_extra} FROM deliveries d
    WHERE d.run_id = r.id AND r.status = 'running'
) last ON true
WHERE r.status IN ('queued', 'running');
"""
WAITING_UNTIL = (
    ",\n        min(d.not_before) FILTER (WHERE d.status = 'pending' AND d.not_before > now())"
    " AS waiting_until"
)


def upgrade() -> None:
    op.execute(
        """
        -- A run published with send_at is `scheduled` until its jobs (deferred with
        -- procrastinate's scheduled_at = send_at) first deliver.
        ALTER TABLE runs ADD COLUMN scheduled_for timestamptz;
        ALTER TABLE runs DROP CONSTRAINT runs_status_check;
        ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (
            status IN ('scheduled', 'queued', 'running', 'completed', 'cancelled'));
        CREATE INDEX runs_scheduled_idx ON runs (scheduled_for) WHERE status = 'scheduled';

        -- {"start": "HH:MM", "end": "HH:MM", "time_zone": "<IANA>"}, or null: when no
        -- message of the campaign may reach a recipient (app/domain/schemas.py QuietHours).
        ALTER TABLE campaigns ADD COLUMN quiet_hours jsonb;

        -- time_zone: the recipient's own IANA zone (publish), over the campaign's.
        -- not_before: a pending delivery inside its recipient's quiet hours waits until
        -- then; claims skip it until the database's now() reaches it. Both nullable
        -- without default: adding them rewrites nothing.
        ALTER TABLE deliveries
            ADD COLUMN time_zone  text,
            ADD COLUMN not_before timestamptz;

        -- The waiting deliver_batch jobs of one run, for a cancel (db/jobs.py): without
        -- it, a cancel reads every waiting job of every scheduled run.
        CREATE INDEX procrastinate_jobs_todo_run_id_idx
            ON procrastinate_jobs ((args ->> 'run_id')) WHERE status = 'todo';

        -- Scheduled runs, soonest first in the runbook's query: when each starts, and
        -- its deliver_batch jobs waiting in the queue (a scheduled run without any, or
        -- one whose start has passed by more than a few seconds, needs a look).
        CREATE VIEW ops_scheduled_runs AS
        SELECT
            r.id AS run_id,
            r.brand_id,
            r.campaign_id,
            c.name AS campaign_name,
            c.channel,
            r.total_recipients AS total,
            r.scheduled_for,
            r.scheduled_for - now() AS starts_in,
            r.created_at,
            r.created_by,
            (SELECT count(*) FROM procrastinate_jobs j
             WHERE j.status = 'todo' AND j.args ->> 'run_id' = r.id::text
               AND j.task_name = 'deliver_batch') AS waiting_jobs
        FROM runs r
        JOIN campaigns c ON c.id = r.campaign_id
        WHERE r.status = 'scheduled';
        """
    )
    op.execute(RUN_PROGRESS.format(replace="OR REPLACE", extra=",\n    r.scheduled_for"))
    op.execute(
        STALLED_RUNS.format(
            replace="OR REPLACE",
            extra=",\n    last.waiting_until",
            lateral_extra=WAITING_UNTIL,
        )
    )


def downgrade() -> None:
    op.execute("DROP VIEW ops_scheduled_runs, ops_run_progress, ops_stalled_runs")
    op.execute(RUN_PROGRESS.format(replace="", extra=""))
    op.execute(STALLED_RUNS.format(replace="", extra="", lateral_extra=""))
    op.execute(
        """
        DROP INDEX procrastinate_jobs_todo_run_id_idx;
        ALTER TABLE deliveries DROP COLUMN time_zone, DROP COLUMN not_before;
        ALTER TABLE campaigns DROP COLUMN quiet_hours;
        DROP INDEX runs_scheduled_idx;
        -- Their jobs still wait for scheduled_at; the older schema knows them as queued.
        UPDATE runs SET status = 'queued' WHERE status = 'scheduled';
        ALTER TABLE runs DROP CONSTRAINT runs_status_check;
        ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (
            status IN ('queued', 'running', 'completed', 'cancelled'));
        ALTER TABLE runs DROP COLUMN scheduled_for;
        """
    )
