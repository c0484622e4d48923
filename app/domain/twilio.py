"""What Twilio's callbacks mean, without I/O: the routes they come to, the opt-out and
opt-in words of an inbound text, and the outcome a message status reports."""

from __future__ import annotations

from typing import Literal

STATUS_PATH = "/v1/messaging/providers/twilio/status"
"""Twilio posts a message's status changes here (each send's StatusCallback:
PUBLIC_BASE_URL + this)."""
INBOUND_PATH = "/v1/messaging/providers/twilio/inbound"
"""Twilio posts the texts that recipients send to our numbers here (configured on the
number or the Messaging Service)."""

OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
"""CTIA's and Twilio's opt-out keywords: a text that is exactly one of them opts out."""
OPT_IN_WORDS = frozenset({"START", "UNSTOP", "YES"})
"""Twilio's opt-in keywords: a text that is exactly one of them opts back in."""
Keyword = Literal["opt_out", "opt_in"]

RECEIPTS = {"delivered": "delivered", "undelivered": "undelivered", "failed": "undelivered"}
"""Twilio's final MessageStatus -> our delivery outcome. `failed` (Twilio could not send
it) and `undelivered` (the carrier could not deliver it) are one outcome for the sender:
the text did not arrive; the detail keeps which, and Twilio's error code."""
MAX_DETAIL = 1000


def keyword(body: str, opt_out_type: str | None) -> Keyword | None:
    """What an inbound text asks: `OptOutType` when Twilio's Advanced Opt-Out set it (it
    also knows the keywords a Messaging Service adds), else the body when it is exactly
    one keyword, in any case, blanks around it ignored. HELP and any other text: None."""
    if opt_out_type:
        kind = opt_out_type.strip().upper()
        return "opt_out" if kind == "STOP" else "opt_in" if kind == "START" else None
    word = body.strip()
    if not word.isascii():  # U+017F (long s) + "top", upper-cased, is "STOP": not sent
        return None
    word = word.upper()
    return "opt_out" if word in OPT_OUT_WORDS else "opt_in" if word in OPT_IN_WORDS else None


def receipt(message_status: str | None, error_code: str | None) -> tuple[str, str | None] | None:
    """(outcome, detail) of a status callback's MessageStatus; None for the statuses
    that are not final (queued, sending, sent, ...)."""
    if message_status is None or message_status not in RECEIPTS:
        return None
    outcome = RECEIPTS[message_status]
    if outcome == "delivered":
        return outcome, None
    detail = f"Twilio: {message_status}" + (f", error {error_code}" if error_code else "")
    return outcome, detail[:MAX_DETAIL]
