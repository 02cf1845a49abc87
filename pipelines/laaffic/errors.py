"""Every way a call to the LAAFFIC API can fail, one exception each.

Messages say what happened and what to check. None of them ever contains the API secret or a
request signature: they are built from codes, messages and URLs only.
"""

from __future__ import annotations


class LaafficError(Exception):
    """Base class for everything the LAAFFIC client raises."""

    retryable: bool = False


class LaafficApiError(LaafficError):
    """The API answered with a non-zero application `code`."""

    code: int | str = "?"
    meaning = "unexpected response code"
    advice = "see the API documentation for this code"

    def __init__(self, msg: str = "", *, code: int | str | None = None, context: str = "") -> None:
        if code is not None:
            self.code = code
        self.api_msg = msg
        where = f" while {context}" if context else ""
        super().__init__(
            f"LAAFFIC API code {self.code} ({self.meaning}){where}: {msg!r}. {self.advice}"
        )


class LaafficAuthError(LaafficApiError):
    code = -1
    meaning = "authentication error"
    advice = (
        "Check LAAFFIC_API_KEY and LAAFFIC_API_SECRET; the request is signed as "
        "md5(key + secret + timestamp)."
    )


class LaafficIpRestrictedError(LaafficApiError):
    code = -2
    meaning = "restricted IP access"
    advice = "This machine's public IP is not on the account's allow-list; add it in the console."


class LaafficTimestampExpiredError(LaafficApiError):
    code = -16
    meaning = "timestamp expired"
    advice = "The request was re-signed with a fresh timestamp."
    retryable = True


class LaafficSystemError(LaafficApiError):
    code = -18
    meaning = "system exception on the API side"
    advice = "Transient; retried with back-off."
    retryable = True


class LaafficParameterError(LaafficApiError):
    code = -22
    meaning = "parameter exception"
    advice = "The request body was refused; check the window, page size (1..100) and filters."


class LaafficUnknownCodeError(LaafficApiError):
    meaning = "undocumented code"
    advice = "The client does not know this code; it is not retried."


API_ERRORS: dict[int, type[LaafficApiError]] = {
    int(cls.code): cls
    for cls in (
        LaafficAuthError,
        LaafficIpRestrictedError,
        LaafficTimestampExpiredError,
        LaafficSystemError,
        LaafficParameterError,
    )
}


class LaafficClockSkewError(LaafficError):
    """-16 persisted although every attempt was freshly signed: the local clock is off."""


class LaafficTransportError(LaafficError):
    """HTTP 5xx/429, a timeout, a dropped connection or a body that is not the documented JSON."""

    retryable = True


class LaafficHttpError(LaafficError):
    """An HTTP status that retrying cannot fix (404, 401, ...): usually a wrong LAAFFIC_BASE_URL."""


class LaafficRetriesExhaustedError(LaafficError):
    """A transient failure did not clear within the configured number of attempts."""

    def __init__(self, attempts: int, last: BaseException, context: str) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(
            f"gave up after {attempts} attempts while {context}; last cause: "
            f"{type(last).__name__}: {last}"
        )


class LaafficIncompleteWindowError(LaafficError):
    """Paging could not account for every task the API reported for a window."""


class LaafficReadStoppedError(LaafficError):
    """A read abandoned because the sync it served stopped (another day failed, or the run was
    terminated): no further request of it was sent."""


class LaafficConfigError(LaafficError):
    """The client is missing configuration (credentials, base URL)."""
