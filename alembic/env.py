"""Alembic runs migrations through psycopg (sync): multi-statement SQL such as
procrastinate's schema goes through `op.execute` as it is."""

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.settings import get_settings


def sqlalchemy_url(database_url: str) -> str:
    scheme, _, rest = database_url.partition("://")
    if scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {scheme}://")
    return f"postgresql+psycopg://{rest}"


def run_migrations() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database_url
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
