"""procrastinate 3.10.0 schema

The SQL is a verbatim copy of procrastinate/sql/schema.sql from procrastinate 3.10.0 (the
version pinned in pyproject.toml), kept beside this file so that this revision never
changes when procrastinate is upgraded. An upgrade of procrastinate comes with a new
revision that applies its migrations from procrastinate/sql/migrations/.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = Path(__file__).with_name("0001_procrastinate_3.10.0_schema.sql")


def upgrade() -> None:
    op.execute(SCHEMA.read_text())


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DO $$
        DECLARE f record;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
            LOOP
                EXECUTE 'DROP FUNCTION ' || f.signature || ' CASCADE';
            END LOOP;
        END $$;
        DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status CASCADE;
        """
    )
