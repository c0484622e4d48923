"""The development provider: each message becomes one line of the worker's log."""

from __future__ import annotations

import logging

from app.core.logs import masked
from jobs.providers.base import OutgoingMessage, SendResult

logger = logging.getLogger("messaging.deliveries")


class LogProvider:
    name = "log"

    async def send(self, message: OutgoingMessage) -> SendResult:
        provider_message_id = f"log-{message.delivery_id}"
        # Never the body nor the subject: on a health platform they may carry medical
        # details; the address only masked (logs travel further than the database).
        if logger.isEnabledFor(logging.INFO):
            fields = {
                "delivery_id": message.delivery_id,
                "run_id": message.run_id,
                "channel": message.channel,
                "recipient": masked(message.recipient),
                "provider_message_id": provider_message_id,
            }
            logger.info("delivered", extra=fields)
        return SendResult(provider_message_id=provider_message_id)

    async def aclose(self) -> None:
        pass
