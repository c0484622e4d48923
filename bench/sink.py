"""A fast webhook receiver for bench/deliver.py: answers 200 {"id": ...} to every POST."""

from __future__ import annotations

from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    delivery_id = _decoder.decode(body).get("delivery_id", "") if body else ""
    answer = msgspec.json.encode({"id": f"sink-{delivery_id}"})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": answer})
