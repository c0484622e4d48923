"""Text that outside parties wrote (providers' answers), made storable in PostgreSQL."""

from __future__ import annotations


def storable(text: str | None, limit: int) -> str | None:
    """`text` as a `text` column can hold it: at most `limit` characters, NUL (which
    PostgreSQL refuses) and what is not UTF-8 (lone surrogates) replaced."""
    if text is None:
        return None
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
