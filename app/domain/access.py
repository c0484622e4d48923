"""Who may do what: the scopes of the contract, and the caller that services act for.

The HTTP layer verifies a bearer token (app/http/auth.py `AccessToken`); services only ask
the questions below of whoever calls them, so that they can be called without HTTP."""

from __future__ import annotations

from typing import Protocol

READ = "messaging:campaigns:read"
WRITE = "messaging:campaigns:write"
PUBLISH = "messaging:campaigns:publish"
AUDIT_READ = "messaging:audit:read"
"""Reading a brand's audit trail: given apart, to who must answer for the changes."""


class Caller(Protocol):
    sub: str
    """Who: becomes `created_by`."""
    brands: list[str]
    """Brands it may act for; ["*"] is every brand."""

    @property
    def all_brands(self) -> bool: ...

    def may_act_for(self, brand_id: str) -> bool: ...
