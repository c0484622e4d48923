"""Database access: the pool, and repositories that own all of the service's SQL."""
