"""Logging, configured once at the edge: readable text on a terminal, JSON lines otherwise.

Modules log through `logging.getLogger(__name__)` and pass structured fields as
`extra={"fields": {...}}`; the formatters render them, and the tenant whose work logged
the line (`tenant_scope`: a context variable, so every task and worker thread a tenant's
job starts carries it). Libraries' records (botocore,
urllib3, msal, aiohttp) go through the same handler from WARNING up, never Python's
last-resort one. An exception attached to a record is rendered as one line — its
type, message and where it was raised — never as a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

HANDLER_NAME = "archiver"
_TENANT: ContextVar[str | None] = ContextVar("archiver_tenant", default=None)


@contextmanager
def tenant_scope(tenant: str) -> Iterator[None]:
    """Every line logged inside (in tasks and threads started inside too) names `tenant`."""
    token = _TENANT.set(tenant)
    try:
        yield
    finally:
        _TENANT.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields, the tenant first when there is one."""
    fields: dict[str, Any] = getattr(record, "fields", {})
    tenant = _TENANT.get()
    return {"tenant": tenant, **fields} if tenant is not None else fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = one_line(record.exc_info[1])
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level message key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = _fields(record)
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{when} {record.levelname.lower():7} {record.getMessage()}"
        if record.exc_info:
            line += f" ({one_line(record.exc_info[1])})"
        return f"{line}  {tail}" if tail else line


def one_line(exc: BaseException | None) -> str:
    """`Type: message (at file:line in function)` for the innermost frame of `exc`."""
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return text
    code = tb.tb_frame.f_code
    return f"{text} (at {code.co_filename}:{tb.tb_lineno} in {code.co_name})"


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    """Route the `archiver` loggers to stderr in the chosen format (`auto`, `text`, `json`)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)  # configured again (tests, demo): one handler, not two
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and errors only
    logger = logging.getLogger("archiver")
    logger.handlers.clear()
    logger.setLevel(level)
    logger.propagate = True
