"""ops views: run progress, what is stuck, why deliveries failed, queue depth

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Each view answers one on-call question with one SELECT; docs/ops.md is their runbook.
Their names and columns are an interface: add columns at the end, never rename one.
Thresholds are not baked in: each view carries the measure (an interval) to filter on,
so that `WHERE doing_for > interval '10 minutes'` picks what counts as stuck today.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEWS = (
    "ops_run_progress",
    "ops_stuck_jobs",
    "ops_stalled_runs",
    "ops_stale_workers",
    "ops_delivery_failures",
    "ops_queue_depth",
)


def upgrade() -> None:
    op.execute(
        """
        -- Every run, from its counters alone (they are the truth of its deliveries):
        -- no delivery row is read, however big the table.
        CREATE VIEW ops_run_progress AS
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
            -- Messages handed to the provider (sent or failed) per second since the
            -- first attempt; skips cost no send and are left out.
            round(
                (r.sent_count + r.failed_count)::numeric
                / nullif(extract(epoch FROM coalesce(r.completed_at, now()) - r.started_at), 0),
                1
            ) AS messages_per_second
        FROM runs r
        JOIN campaigns c ON c.id = r.campaign_id;

        -- Jobs being worked on, with how long since they (last) started and how old
        -- their worker's heartbeat is. A job whose worker died stays `doing` until a
        -- worker's stall recovery requeues it (STALLED_JOB_SECONDS).
        CREATE VIEW ops_stuck_jobs AS
        SELECT
            j.id AS job_id,
            j.queue_name,
            j.task_name,
            j.args ->> 'run_id' AS run_id,
            (j.args ->> 'first')::integer AS first_position,
            (j.args ->> 'last')::integer AS last_position,
            j.attempts,
            j.worker_id,
            started.at AS started_at,
            now() - started.at AS doing_for,
            w.last_heartbeat,
            now() - w.last_heartbeat AS heartbeat_age
        FROM procrastinate_jobs j
        LEFT JOIN LATERAL (
            SELECT max(e.at) AS at FROM procrastinate_events e
            WHERE e.job_id = j.id AND e.type = 'started'
        ) started ON true
        LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
        WHERE j.status = 'doing';

        -- Runs not yet ended, with the time since their last progress: the newest
        -- updated_at of their deliveries, else their start, else their creation. Only
        -- the deliveries of `running` runs are read (a queued run has made none).
        CREATE VIEW ops_stalled_runs AS
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
            now() - coalesce(last.at, r.started_at, r.created_at) AS idle_for
        FROM runs r
        LEFT JOIN LATERAL (
            SELECT max(d.updated_at) AS at FROM deliveries d
            WHERE d.run_id = r.id AND r.status = 'running'
        ) last ON true
        WHERE r.status IN ('queued', 'running');

        -- Every worker procrastinate knows of, with the age of its heartbeat and the
        -- jobs it holds. Workers beat every STALLED_JOB_SECONDS / 3; a worker silent
        -- for STALLED_JOB_SECONDS is dead, and its jobs are requeued by the others.
        CREATE VIEW ops_stale_workers AS
        SELECT
            w.id AS worker_id,
            w.last_heartbeat,
            now() - w.last_heartbeat AS heartbeat_age,
            (SELECT count(*) FROM procrastinate_jobs j
             WHERE j.worker_id = w.id AND j.status = 'doing') AS doing_jobs
        FROM procrastinate_workers w;

        -- Why deliveries failed, by run and error: `failed` ones (of runs that have
        -- any, from the counter) and `pending` ones waiting for a retry after a
        -- transient error (of running runs). Other runs' deliveries are not read.
        CREATE VIEW ops_delivery_failures AS
        SELECT
            r.id AS run_id,
            r.brand_id,
            r.campaign_id,
            f.status,
            f.error,
            f.deliveries,
            f.last_at,
            f.example_position
        FROM runs r
        CROSS JOIN LATERAL (
            SELECT
                d.status,
                d.last_error AS error,
                count(*) AS deliveries,
                max(d.updated_at) AS last_at,
                min(d.position) AS example_position
            FROM deliveries d
            WHERE d.run_id = r.id
              AND (d.status = 'failed' OR (d.status = 'pending' AND d.last_error IS NOT NULL))
            GROUP BY d.status, d.last_error
        ) f
        WHERE r.failed_count > 0 OR r.status = 'running';

        -- Jobs per queue and status. For `todo`: how many are due (not scheduled
        -- later, e.g. a retry's backoff) and how long the oldest due one has waited
        -- since it became due.
        CREATE VIEW ops_queue_depth AS
        SELECT
            j.queue_name,
            j.status::text AS status,
            count(*) AS jobs,
            count(*) FILTER (
                WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
            ) AS due_jobs,
            max(now() - greatest(j.scheduled_at, queued.at)) FILTER (
                WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
            ) AS oldest_waiting_for
        FROM procrastinate_jobs j
        LEFT JOIN LATERAL (
            SELECT max(e.at) AS at FROM procrastinate_events e
            WHERE e.job_id = j.id AND j.status = 'todo'
              AND e.type IN ('deferred', 'deferred_for_retry', 'retried')
        ) queued ON true
        GROUP BY j.queue_name, j.status;
        """
    )


def downgrade() -> None:
    op.execute(f"DROP VIEW {', '.join(VIEWS)}")
