"""Numbered parameters for statements assembled from fixed SQL fragments."""

from __future__ import annotations


class Params:
    """Each value passed in becomes the next `$n` placeholder, never SQL text:

    p = Params(); sql = f"... WHERE brand_id = {p(brand)}"; conn.fetch(sql, *p.values)
    """

    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"
