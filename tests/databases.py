"""A test database used again: once a test is done with its copy of the migrated template,
the copy is emptied for a later test instead of dropped, if nothing but its rows changed.

A new copy costs PostgreSQL about 0.3 s of CPU (CREATE DATABASE from the template, then DROP
DATABASE and its checkpoints); emptying one costs about 0.01 s. Half of the suite's tests
take a copy, and PostgreSQL's CPU bounded the suite's time on 2 cores.

Emptied: every row deleted (but the template's one of `alembic_version`), with triggers
off (session_replication_role), every used sequence restarted, and the statistics of an
ANALYZE deleted. Not emptied, so dropped: a copy whose shape differs from the template's
(`SHAPE`: a migration test, new partitions, a setting, a prepared transaction), one that
grew past MAX_BYTES, or one the test left unreachable.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

MAX_BYTES = 8 << 20
"""A copy larger than this is dropped: deleting its rows would cost more than a new one."""

# Everything about a database that a test may change besides its rows, as one digest.
SHAPE = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
  SELECT 'schema ' || nspname FROM pg_namespace
   WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  UNION ALL
  SELECT concat_ws(' ', 'relation', c.oid::regclass, c.relkind, c.relpersistence, c.relowner,
                   c.reloptions, c.relacl, c.relrowsecurity, pg_get_expr(c.relpartbound, c.oid))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  UNION ALL
  SELECT concat_ws(' ', 'column', a.attrelid::regclass, a.attname,
                   format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                   a.attgenerated, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
     AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT concat_ws(' ', 'constraint', conrelid::regclass, conname, convalidated,
                   pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index
   WHERE indrelid::regclass::text NOT LIKE 'pg\\_%'
  UNION ALL
  SELECT concat_ws(' ', 'trigger', tgrelid::regclass, tgname, tgenabled) FROM pg_trigger
   WHERE NOT tgisinternal
  UNION ALL
  SELECT concat_ws(' ', 'function', p.oid::regprocedure, md5(p.prosrc), p.proconfig)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  UNION ALL
  SELECT concat_ws(' ', 'view', oid::regclass, pg_get_viewdef(oid)) FROM pg_class
   WHERE relkind IN ('v', 'm') AND relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT concat_ws(' ', 'enum', enumtypid::regtype, enumlabel, enumsortorder) FROM pg_enum
  UNION ALL
  SELECT concat_ws(' ', 'extension', extname, extversion) FROM pg_extension
  UNION ALL
  SELECT concat_ws(' ', 'event trigger', evtname, evtenabled) FROM pg_event_trigger
  UNION ALL
  SELECT concat_ws(' ', 'settings', setrole, setconfig) FROM pg_db_role_setting
   WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL
  SELECT concat_ws(' ', 'database', datconnlimit, datallowconn, datistemplate) FROM pg_database
   WHERE datname = current_database()
  UNION ALL
  SELECT 'prepared ' || gid FROM pg_prepared_xacts WHERE database = current_database()
  UNION ALL
  SELECT 'migrated ' || version_num FROM alembic_version
) AS shape(item)
"""

EMPTY = """
DO $$
DECLARE
  item text;
BEGIN
  SET LOCAL session_replication_role = replica;  -- no trigger: not the audit's refusal
  FOR item IN
    SELECT c.oid::regclass FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
       AND NOT c.relispartition AND c.relname <> 'alembic_version'
  LOOP
    EXECUTE 'DELETE FROM ' || item;
  END LOOP;
  FOR item IN
    SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences
     WHERE last_value IS NOT NULL
  LOOP
    EXECUTE 'ALTER SEQUENCE ' || item || ' RESTART';
  END LOOP;
  -- What ANALYZE learnt of earlier rows (autovacuum's too, as modifications add up):
  -- gone, as in a new copy, whose plans are made without it.
  DELETE FROM pg_statistic
   WHERE starelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace);
END $$
"""

SIZE = """
SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class
 WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
"""

OTHERS = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


SETTINGS = """
SELECT unnest(setconfig) FROM pg_db_role_setting
 WHERE setrole = 0
   AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def database_settings(url: str) -> list[str]:
    """The database's own settings (`ALTER DATABASE ... SET`) as `name=value` items: a
    migration sets some (jit off), and CREATE DATABASE does not copy them."""
    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(SETTINGS).fetchall()]


def set_database_settings(url: str, settings: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for setting in settings:
            name, _, value = setting.partition("=")
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(conn.info.dbname), sql.Identifier(name), sql.Literal(value)
                )
            )


def shape_of(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return _shape(conn)


def _shape(conn: psycopg.Connection) -> str:
    row = conn.execute(SHAPE).fetchone()
    assert row is not None
    return str(row[0])


def emptied(url: str, shape: str, gone: float) -> bool:
    """Whether the database at `url` is now empty for another test: its shape was still
    `shape` and it was small. Its other sessions are ended first (at most `gone` seconds:
    what a test left behind). False leaves it as it was, for dropping."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + gone
            while conn.execute(OTHERS).fetchall():
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            size = conn.execute(SIZE).fetchone()
            if _shape(conn) != shape or size is None or size[0] > MAX_BYTES:
                return False
            conn.execute(EMPTY)
            return True
    except psycopg.OperationalError:  # connections refused, or the database is gone
        return False
