"""What the error pages say, per HTTP status: a title and one line, never internals."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ErrorMessage", "error_message"]


@dataclass(frozen=True)
class ErrorMessage:
    title: str
    explanation: str


_MESSAGES: dict[int, ErrorMessage] = {
    400: ErrorMessage(
        "Bad request",
        "The request could not be understood. Check the address and try again.",
    ),
    401: ErrorMessage(
        "Sign-in required",
        "You need to sign in to see this page.",
    ),
    403: ErrorMessage(
        "Access denied",
        "You do not have permission to open this page. "
        "If you think you should, contact your administrator.",
    ),
    404: ErrorMessage(
        "Page not found",
        "There is nothing at this address. The link may be out of date or mistyped.",
    ),
    421: ErrorMessage(
        "Unknown site",
        "This address is not served here. Check that you typed it correctly.",
    ),
    429: ErrorMessage(
        "Too many attempts",
        "For your security, please wait a little before trying again.",
    ),
    500: ErrorMessage(
        "Something went wrong",
        "An unexpected error occurred on our side. Please try again in a moment.",
    ),
    502: ErrorMessage(
        "Application unavailable",
        "The application behind this page did not answer correctly. Please try again shortly.",
    ),
    503: ErrorMessage(
        "Temporarily unavailable",
        "The sign-in service is briefly unavailable. Please try again in a few minutes.",
    ),
    504: ErrorMessage(
        "Application timed out",
        "The application took too long to respond. Please try again shortly.",
    ),
}

_CLIENT_ERROR = ErrorMessage(
    "Request not completed", "The request could not be completed. Check the address and try again."
)
_SERVER_ERROR = _MESSAGES[500]


def error_message(status: int) -> ErrorMessage:
    """The message for a status; unlisted 4xx and 5xx get a generic one of their class."""
    found = _MESSAGES.get(status)
    if found is not None:
        return found
    return _SERVER_ERROR if status >= 500 else _CLIENT_ERROR
