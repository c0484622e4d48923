"""audit trail: who changed what, in the transaction that changed it, kept six years

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

`audit_events` is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. It is
partitioned by month of `occurred_at`, so that retention (AUDIT_RETENTION_DAYS, the
worker's hourly maintenance: jobs/retention.py) drops whole months, as it does for
`deliveries`, and never deletes a row. Rows are written by db/audit.py `record_audit` only.
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MONTHS_AHEAD = 3
"""Months after the current one created here; then the worker's maintenance keeps ahead."""

ACTIONS = (
    "campaign.created",
    "campaign.updated",
    "campaign.activated",
    "campaign.archived",
    "run.published",
    "run.cancelled",
    "suppression.created",
    "suppression.deleted",
    "rate_limit.updated",
)


def upgrade() -> None:
    actions = ", ".join(f"'{action}'" for action in ACTIONS)
    op.execute(
        f"""
        CREATE TABLE audit_events (
            id          uuid NOT NULL DEFAULT uuid_v7(),
            -- The time of the transaction that made the change.
            occurred_at timestamptz NOT NULL DEFAULT now(),
            brand_id    text NOT NULL,
            -- The token's `sub`; `provider:<name>` (feedback, 21610); `recipient`.
            actor       text NOT NULL,
            action      text NOT NULL CHECK (action IN ({actions})),
            target_type text NOT NULL CHECK (target_type IN
                                             ('campaign', 'run', 'suppression', 'rate_limit')),
            -- A campaign's or run's id, a suppression's address, a brand's id (rate limit).
            target_id   text NOT NULL,
            -- X-Request-ID of the API request; null for what the worker did (a 21610).
            request_id  text,
            -- {{field: {{"old": ..., "new": ...}}}}; texts of messages only as {{"changed": true}}.
            changes     jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (brand_id, occurred_at, id)
        ) PARTITION BY RANGE (occurred_at);
        -- GET .../audit?target_id= and docs/ops.md's "every change to this suppression".
        CREATE INDEX audit_events_target_idx
            ON audit_events (brand_id, target_id, occurred_at, id);

        CREATE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$;
        -- Row triggers of a partitioned table are cloned onto every partition, those
        -- attached later included; TRUNCATE of the parent is refused at statement level.
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_refuse();
        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse();

        -- The partition of `audit_events` for the (UTC) month of `month`, created if
        -- missing, and its name. Created apart and then attached: ATTACH takes a lighter
        -- lock on `audit_events` than CREATE TABLE ... PARTITION OF.
        CREATE FUNCTION audit_events_ensure_partition(month date) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            first date := date_trunc('month', month)::date;
            name text := 'audit_events_' || to_char(first, 'YYYY_MM');
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = 'audit_events'::regclass AND c.relname = name) THEN
                RETURN name;
            END IF;
            EXECUTE format('CREATE TABLE %I (LIKE audit_events INCLUDING ALL)', name);
            EXECUTE format(
                'ALTER TABLE audit_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                name, first::timestamp AT TIME ZONE 'UTC',
                (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            RETURN name;
        END
        $$;

        -- Drops one month partition of `audit_events` (by name; nothing else): the only
        -- way audit rows ever go.
        CREATE FUNCTION audit_events_drop_partition(name text) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            IF name !~ '^audit_events_[0-9]{{4}}_[0-9]{{2}}$' THEN
                RAISE EXCEPTION 'not a month partition of audit_events: %', name;
            END IF;
            EXECUTE format('DROP TABLE %I', name);
        END
        $$;

        SELECT audit_events_ensure_partition(CAST(month AS date)) FROM generate_series(
            date_trunc('month', now() AT TIME ZONE 'UTC'),
            date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{MONTHS_AHEAD} months',
            interval '1 month') AS month;

        -- The audit trail, newest first (docs/ops.md): who did what to which target.
        -- `fields`: the names of what changed, to scan by eye before reading `changes`.
        CREATE VIEW ops_audit AS
        SELECT
            occurred_at,
            brand_id,
            actor,
            action,
            target_type,
            target_id,
            request_id,
            ARRAY(SELECT jsonb_object_keys(changes) ORDER BY 1) AS fields,
            changes,
            id
        FROM audit_events;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW ops_audit;
        DROP TABLE audit_events;  -- and its partitions
        DROP FUNCTION audit_events_drop_partition(text);
        DROP FUNCTION audit_events_ensure_partition(date);
        DROP FUNCTION audit_events_refuse();
        """
    )
