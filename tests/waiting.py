"""How long tests wait."""

PATIENCE = 60.0
"""Seconds a test waits for what another process or thread does (a server up, a run
ended, a row written): generous, so that a loaded machine makes a test slower, never
failed. A passing test does not wait that long; bounds that a test asserts are set apart,
each with its reason."""
