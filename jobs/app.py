"""The procrastinate app shared by web (to defer) and worker (to run)."""

from procrastinate import App

from app.settings import get_settings
from jobs.asyncpg_connector import AsyncpgConnector

DELIVERY_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
"""Housekeeping (periodic purges): its own queue, so it never waits behind deliveries."""

app = App(
    connector=AsyncpgConnector(get_settings().database_url),
    import_paths=["jobs.tasks"],
)
