"""The HTTP API of the messaging service."""
