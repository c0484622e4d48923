"""Domain errors. No HTTP here: app/http/error_handlers.py maps each class to a status code."""

from typing import Any


class ServiceError(Exception):
    code = "error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(ServiceError):
    code = "validation_error"


class Unauthenticated(ServiceError):
    """A provider's request whose signature does not match its body."""

    code = "unauthorized"


class NotSigned(ServiceError):
    """A provider's request that is not signed as that provider signs, where the
    provider's own convention is to refuse it with 403 (Twilio's)."""

    code = "forbidden"


class NotFound(ServiceError):
    code = "not_found"


class ForbiddenBrand(ServiceError):
    code = "forbidden"


class BadState(ServiceError):
    code = "bad_state"

    def __init__(self, message: str, *, status: str, allowed: list[str], **details: Any) -> None:
        super().__init__(message, {"status": status, "allowed": allowed, **details})


class DataErased(ServiceError):
    """The recipients' data of a run was erased (DELIVERY_DATA_DAYS after it ended): what
    needs it (a retry) cannot be done any more. Its run and deliveries remain."""

    code = "data_erased"


class Gone(ServiceError):
    """The resource existed, and was removed for good (retention)."""

    code = "gone"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class InvalidCursor(ServiceError):
    """A pagination cursor that this service did not issue for this very listing."""

    code = "invalid_cursor"


class IdempotencyKeyReused(ServiceError):
    """An Idempotency-Key already used for a request with a different body."""

    code = "idempotency_key_reused"


class RequestInProgress(ServiceError):
    """The first request with this Idempotency-Key has not finished yet."""

    code = "idempotency_request_in_progress"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after
