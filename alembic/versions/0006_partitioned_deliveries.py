"""deliveries partitioned by month of the run id (UUIDv7); runs remember purged deliveries

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Run ids become UUIDv7 (48 bits of Unix milliseconds first), so a range of ids is a range
of time and `deliveries`, keyed (run_id, position), can be range-partitioned by month of
its run id: one partition per month, dropped whole by retention (jobs/retention.py).

The existing table is converted without copying it: it is renamed `deliveries_legacy`
and attached as the DEFAULT partition, keeping its rows and its primary-key index.
Its run ids are random (UUIDv4), spread over the whole id space, so most of them fall
outside any month that will ever be created. Those that fall inside the next
`WINDOW_YEARS` of months (about 0.1% of runs) are moved to the month partition their id
names, created here for them; a CHECK constraint then tells PostgreSQL that the legacy
partition holds nothing of that window, so that attaching a new month partition later
never scans it (a scan under an ACCESS EXCLUSIVE lock that would stall every query of
`deliveries`). Legacy deliveries leave like the others, by retention (run by run).

Views that read `deliveries` are dropped and created again, as they are, on the new table.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WINDOW_YEARS = 10
MONTHS_AHEAD = 3
"""Months after the current one created here; then the worker's maintenance keeps ahead."""

FUNCTIONS = """
-- A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds of `at`, version 7, variant, random.
-- (PostgreSQL 18 has uuidv7(); this one runs on 15.) db/ids.py makes the same in Python.
CREATE FUNCTION uuid_v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint)
                                      FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- The smallest UUIDv7 of the millisecond of `at`: the bound of a range of run ids.
CREATE FUNCTION uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(
        substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
        || '\\x00000000000000000000'::bytea,
        'hex')::uuid
$$;

-- The instant a UUIDv7 names (for an id of another version: a meaningless instant).
CREATE FUNCTION uuid_v7_time(id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(
        ('x' || substring(replace(id::text, '-', '') FROM 1 FOR 12))::bit(48)::bigint / 1000.0)
$$;

-- The partition of `deliveries` for the (UTC) month of `month`, created if missing, and
-- its name. Created apart and then attached: ATTACH takes only a SHARE UPDATE EXCLUSIVE
-- lock on `deliveries` (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).
-- Rows of that range still in the legacy partition (a legacy id that happens to name
-- this month) are moved in first.
CREATE FUNCTION deliveries_ensure_partition(month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    name text := 'deliveries_' || to_char(first, 'YYYY_MM');
    lower_id uuid := uuid_v7_floor(first::timestamp AT TIME ZONE 'UTC');
    upper_id uuid := uuid_v7_floor((first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'deliveries'::regclass AND c.relname = name) THEN
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE deliveries INCLUDING ALL)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM deliveries_legacy WHERE run_id >= $1 AND run_id < $2'
        ' RETURNING *) INSERT INTO %I SELECT * FROM moved', name)
        USING lower_id, upper_id;
    EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lower_id, upper_id);
    RETURN name;
END
$$;

-- Drops one month partition of `deliveries` (by name; nothing else).
CREATE FUNCTION deliveries_drop_partition(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF name !~ '^deliveries_[0-9]{4}_[0-9]{2}$' THEN
        RAISE EXCEPTION 'not a month partition of deliveries: %', name;
    END IF;
    EXECUTE format('DROP TABLE %I', name);
END
$$;
"""


OPS_VIEW = r"""
-- The partitions of `deliveries` (docs/ops.md): the newest `month` must stay at least two
-- months ahead (the worker's hourly maintenance keeps three), and retention drops the
-- oldest. `month` is null for the legacy (DEFAULT) partition.
CREATE VIEW ops_delivery_partitions AS
SELECT
    c.relname AS partition,
    CASE WHEN c.relname ~ '^deliveries_\d{4}_\d{2}$'
         THEN to_date(substring(c.relname FROM 12), 'YYYY_MM') END AS month,
    pg_get_expr(c.relpartbound, c.oid) AS bounds,
    greatest(c.reltuples, 0)::bigint AS estimated_rows,
    pg_total_relation_size(c.oid) AS total_bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'deliveries'::regclass;
"""


# ops_delivery_failures (0004) gains `run_completed_at`, so that "recent failures" can skip
# the runs that ended long ago before reading any of their deliveries (docs/ops.md).
DELIVERY_FAILURES = """
CREATE {replace} VIEW ops_delivery_failures AS
SELECT
    r.id AS run_id,
    r.brand_id,
    r.campaign_id,
    f.status,
    f.error,
    f.deliveries,
    f.last_at,
    f.example_position{extra}
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
"""


def _dependent_views(table: str) -> list[tuple[str, str]]:
    """(name, definition) of the views that read `table`, in creation order."""
    rows = op.get_bind().execute(
        text(
            """
            SELECT DISTINCT v.oid, v.relname, pg_get_viewdef(v.oid) AS definition
            FROM pg_depend d
            JOIN pg_rewrite r ON r.oid = d.objid
            JOIN pg_class v ON v.oid = r.ev_class
            WHERE d.refobjid = CAST(:table AS regclass) AND v.relkind = 'v'
            ORDER BY v.oid
            """
        ),
        {"table": table},
    )
    return [(row.relname, row.definition) for row in rows]


def _drop_views(views: list[tuple[str, str]]) -> None:
    for name, _ in reversed(views):
        op.execute(f'DROP VIEW "{name}"')


def _create_views(views: list[tuple[str, str]]) -> None:
    for name, definition in views:
        op.execute(f'CREATE VIEW "{name}" AS {definition}')


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(
        """
        ALTER TABLE runs ALTER COLUMN id SET DEFAULT uuid_v7();
        -- Set when the run's deliveries were removed by retention; the run and its
        -- counters stay, its deliveries listing is 410.
        ALTER TABLE runs ADD COLUMN deliveries_purged_at timestamptz;
        -- Runs that ended and still have their deliveries: what retention looks at.
        CREATE INDEX runs_deliveries_kept_idx ON runs (completed_at)
            WHERE deliveries_purged_at IS NULL AND completed_at IS NOT NULL;
        -- The ops views pick runs not ended, or ended recently: with many runs, these
        -- two keep them from reading every run ever (bench/growth.py).
        CREATE INDEX runs_completed_at_idx ON runs (completed_at);
        CREATE INDEX runs_not_ended_idx ON runs (created_at)
            WHERE status IN ('queued', 'running');

        -- No JIT compilation in this database: the ops views over a partitioned table of
        -- tens of millions of rows have estimated costs above jit_above_cost, and
        -- PostgreSQL then spent 0.75 s compiling a query that runs in 25 ms (measured
        -- with bench/growth.py; docs/adr/0034-ops-indexes-and-jit.md). Nothing this
        -- service runs is the long, CPU-bound kind of query that JIT pays off for.
        DO $$ BEGIN
            EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
        END $$;
        """
    )
    views = _dependent_views("deliveries")
    _drop_views(views)

    op.execute("ALTER TABLE deliveries RENAME TO deliveries_legacy")
    # Index names are per schema: free the old ones for the partitioned table's indexes.
    # (Constraints keep their names: a partition's must match its parent's.)
    indexes = op.get_bind().execute(
        text("SELECT indexname FROM pg_indexes WHERE tablename = 'deliveries_legacy'")
    )
    for (index,) in list(indexes):
        if index.startswith("deliveries_") and not index.startswith("deliveries_legacy"):
            legacy_name = "deliveries_legacy_" + index.removeprefix("deliveries_")
            op.execute(f'ALTER INDEX "{index}" RENAME TO "{legacy_name}"')
    window_start, window_end = (
        op.get_bind()
        .execute(
            text(
                f"""
            SELECT uuid_v7_floor(m), uuid_v7_floor(m + interval '{WINDOW_YEARS} years')
            FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS m) s
            """
            )
        )
        .one()
    )
    op.execute(
        f"""
        CREATE TABLE deliveries (LIKE deliveries_legacy INCLUDING ALL)
            PARTITION BY RANGE (run_id);

        -- The legacy rows whose random id names a month of the window: set aside, so that
        -- the legacy partition can be declared free of the window.
        CREATE TEMPORARY TABLE deliveries_in_window (LIKE deliveries_legacy) ON COMMIT DROP;
        WITH moved AS (
            DELETE FROM deliveries_legacy
            WHERE run_id >= '{window_start}' AND run_id < '{window_end}'
            RETURNING *
        )
        INSERT INTO deliveries_in_window SELECT * FROM moved;

        -- Constants, not expressions: PostgreSQL proves from them, without a scan, that a
        -- month partition attached later holds nothing of the legacy partition.
        ALTER TABLE deliveries_legacy ADD CONSTRAINT deliveries_legacy_outside_window
            CHECK (run_id < '{window_start}'::uuid OR run_id >= '{window_end}'::uuid);
        ALTER TABLE deliveries ATTACH PARTITION deliveries_legacy DEFAULT;

        SELECT deliveries_ensure_partition(CAST(month AS date)) FROM (
            SELECT generate_series(
                date_trunc('month', now() AT TIME ZONE 'UTC'),
                date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{MONTHS_AHEAD} months',
                interval '1 month') AS month
            UNION
            SELECT DISTINCT date_trunc('month', uuid_v7_time(run_id) AT TIME ZONE 'UTC')
            FROM deliveries_in_window
        ) months;
        INSERT INTO deliveries SELECT * FROM deliveries_in_window;
        """
    )
    _create_views(views)
    op.execute(
        DELIVERY_FAILURES.format(
            replace="OR REPLACE", extra=",\n    r.completed_at AS run_completed_at"
        )
    )
    op.execute(OPS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW ops_delivery_partitions")
    views = _dependent_views("deliveries")
    _drop_views(views)
    op.execute(
        """
        CREATE TABLE deliveries_unpartitioned (LIKE deliveries INCLUDING ALL);
        INSERT INTO deliveries_unpartitioned SELECT * FROM deliveries;
        DROP TABLE deliveries;
        ALTER TABLE deliveries_unpartitioned RENAME TO deliveries;
        ALTER INDEX deliveries_unpartitioned_pkey RENAME TO deliveries_pkey;

        DO $$ BEGIN
            EXECUTE format('ALTER DATABASE %I RESET jit', current_database());
        END $$;
        DROP INDEX runs_not_ended_idx;
        DROP INDEX runs_completed_at_idx;
        DROP INDEX runs_deliveries_kept_idx;
        ALTER TABLE runs DROP COLUMN deliveries_purged_at;
        ALTER TABLE runs ALTER COLUMN id SET DEFAULT gen_random_uuid();

        DROP FUNCTION deliveries_drop_partition(text);
        DROP FUNCTION deliveries_ensure_partition(date);
        DROP FUNCTION uuid_v7_time(uuid);
        DROP FUNCTION uuid_v7_floor(timestamptz);
        DROP FUNCTION uuid_v7(timestamptz);
        """
    )
    _create_views([(name, sql) for name, sql in views if name != "ops_delivery_failures"])
    op.execute(DELIVERY_FAILURES.format(replace="", extra=""))
