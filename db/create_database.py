"""Create the database named in DATABASE_URL if it does not exist yet (development)."""

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.core.settings import get_settings


async def create_database(database_url: str) -> bool:
    """Returns True when the database was created, False when it already existed."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(maintenance_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        # CREATE DATABASE takes no parameters; quote the identifier instead.
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


if __name__ == "__main__":
    url = get_settings().database_url
    created = asyncio.run(create_database(url))
    print(f"database {urlsplit(url).path.lstrip('/')}: {'created' if created else 'exists'}")
