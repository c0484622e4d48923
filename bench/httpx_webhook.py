"""The webhook provider as it was before issue 10 (httpx), kept only so that bench/deliver.py
can compare it with the current one (aiohttp) in the same run: the same message, headers,
signature and reading of the answer. Not used by the service.

    python -m bench.httpx_webhook      # a worker process (jobs.worker) with this provider
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import msgspec

import jobs.providers
from jobs.providers.base import OutgoingMessage, PermanentError, SendResult, TransientError
from jobs.providers.webhook import MAX_ANSWER_BYTES, _message_id

_TRANSIENT_4XX = {408, 429}


class HttpxWebhookProvider:
    name = "webhook"

    def __init__(
        self, url: str, secret: str, *, timeout: float = 10.0, max_connections: int = 8
    ) -> None:
        self._url = url
        self._key = secret.encode()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0), pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": "messaging-webhook/1"},
        )

    async def send(self, message: OutgoingMessage) -> SendResult:
        body = msgspec.json.encode(message)
        signature = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.delivery_id,
            "X-Signature": f"sha256={signature}",
        }
        try:
            async with self._client.stream(
                "POST", self._url, content=body, headers=headers
            ) as response:
                answer = bytearray()
                async for chunk in response.aiter_bytes():
                    answer += chunk
                    if len(answer) >= MAX_ANSWER_BYTES:
                        break
        except httpx.HTTPError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return SendResult(provider_message_id=_message_id(bytes(answer)))
        detail = f"HTTP {response.status_code}: {answer[:500].decode('utf-8', 'replace')}"
        if response.status_code in _TRANSIENT_4XX or response.is_server_error:
            raise TransientError(detail)
        raise PermanentError(detail)

    async def aclose(self) -> None:
        await self._client.aclose()


if __name__ == "__main__":
    from jobs import worker

    # build_providers looks the class up in jobs.providers when it builds the provider.
    jobs.providers.WebhookProvider = HttpxWebhookProvider  # type: ignore[misc,assignment]
    worker.main()
