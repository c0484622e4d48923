"""A fast receiver for bench/deliver.py: answers 200 {"id": ...} to every JSON POST (the
webhook provider's), and 201 {"sid": ...} to every form POST (a stand-in of Twilio's
Messages API)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_FORM = b"application/x-www-form-urlencoded"
_sids = itertools.count()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if dict(scope["headers"]).get(b"content-type") == _FORM:
        status, answer = 201, msgspec.json.encode({"sid": f"SM{next(_sids):032x}"})
    else:
        delivery_id = _decoder.decode(body).get("delivery_id", "") if body else ""
        status, answer = 200, msgspec.json.encode({"id": f"sink-{delivery_id}"})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": answer})
