"""Errors, grouped by what the caller must do about them.

    ArchiverError
    ├── UsageError          bad command line, configuration or destination: exit 2, nothing written
    │   └── NothingArchived a destination without a manifest, to `status` and `verify` alike
    ├── StopRun             the whole run cannot go on (e.g. a missing Graph permission): exit 2
    ├── LeaseLost           another worker took our window over: leave it to that worker
    └── WindowError         this window fails; the others go on, the run exits 1
        ├── RetryableError  worth another attempt after a pause (429, 5xx, resets, bad bodies)
        │   └── ThrottledError  Graph said 429; carries its Retry-After, if any
        └── AuthExpiredError    401: fetch a fresh token and try once more

Third-party exceptions (aiohttp, botocore, msal) are translated into these at one
boundary each (graph/client.py, store/, graph/auth.py), with `raise ... from`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ArchiverError(Exception):
    """Raised for every failure the archiver knows how to report in one line."""


class UsageError(ArchiverError):
    """Raised when the command line, configuration or destination is wrong (exit 2)."""


class NothingArchived(UsageError):
    """Raised when a destination holds no manifest: `status` and `verify` give the same
    one line (exit 2); with tenants, a tenant that has none yet is shown and skipped."""

    def __init__(self, description: str) -> None:
        super().__init__(f"destination {description}: nothing archived here (no manifest)")


class StopRun(ArchiverError):
    """Raised when nothing more can succeed in this run, such as a missing permission."""


class LeaseLost(ArchiverError):
    """Raised when another worker took over a window this worker was archiving."""


class WindowError(ArchiverError):
    """Raised when one window cannot be archived; the run goes on with the others.

    `status` is the HTTP status Graph answered, when the failure was an answer.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(WindowError):
    """Raised for a transient failure worth another attempt after a pause."""


class ThrottledError(RetryableError):
    """Raised when Graph answers 429; `retry_after` is its Retry-After in seconds, if given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, status="429")
        self.retry_after = retry_after


class AuthExpiredError(WindowError):
    """Raised when Graph answers 401: the token must be refreshed before one more try."""


def internal_error(exc: BaseException) -> str:
    """One line for an exception the archiver did not expect (a bug, or a library's)."""
    text = " ".join(str(exc).split())
    return f"internal error: {type(exc).__name__}" + (f": {text}" if text else "")


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside a (nested) exception group, or the exception itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def describe(error: BaseException) -> tuple[str, bool]:
    """The one line that says what stopped a command or a tenant's job, and whether it
    was refused (usage, configuration, credentials, consent: exit 2) rather than failed.

    Of several errors (an exception group), a refusal wins, then the archiver's own
    errors, then anything else as an internal error."""
    errors = leaves(error)
    refused = [e for e in errors if isinstance(e, UsageError | StopRun)]
    if refused:
        return str(refused[0]), True
    ours = [e for e in errors if isinstance(e, ArchiverError)]
    if ours:
        return str(ours[0]), False
    return internal_error(errors[0]), False


@contextmanager
def unwrapped() -> Iterator[None]:
    """Let the single exception a task group collected through as itself, so callers
    catch WindowError or StopRun rather than an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
