"""Keeping customer data and secrets out of logs and dead-letter headers.

Two sources leak without anyone writing them on purpose:

- PostgreSQL errors: asyncpg's `str()` of an error appends `DETAIL:` (`Failing row
  contains (...)`, `Key (user_id)=(...) already exists`) and SQLAlchemy's adds
  `[parameters: ...]`; tracebacks repeat them.
- Provider SDKs at DEBUG: Stripe logs request and response bodies, PaymentIntent
  `client_secret`s included.

`failure_reason` is the one-line reason of a failed message (for `x-billing-reason` and
the log); `redact` scrubs any text; `RedactingFilter` applies it to every log record.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

import asyncpg

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PostgreSQL's DETAIL (row values, key values) up to the end of its line, and the
    # fragments themselves wherever they are quoted without it.
    (re.compile(r"DETAIL:[^\n]*"), f"DETAIL: {REDACTED}"),
    (re.compile(r"Failing row contains \([^\n]*"), f"{REDACTED} row"),
    (re.compile(r"(Key \([^)\n]*\))=\([^\n]*"), rf"\1={REDACTED}"),
    # The bound parameters SQLAlchemy appends to its errors.
    (re.compile(r"\[parameters: [^\n]*"), f"[parameters: {REDACTED}]"),
    # Invalid-input errors quote the value they refused.
    (re.compile(r'(invalid input (?:syntax|value) for [^:\n]*): "[^\n]*"'), rf"\1: {REDACTED}"),
    # client_secret values in JSON, Python reprs, form bodies and logfmt.
    (
        re.compile(r"""(client_secret["']?\s*[:=]\s*["']?)[^"'\s&,}]+"""),
        rf"\1{REDACTED}",
    ),
    # Stripe's secret tokens wherever they are: pi_..._secret_..., seti_..._secret_...
    (re.compile(r"\b[A-Za-z0-9]+_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"), REDACTED),
    # API keys: sk_live_..., rk_test_..., whsec_...
    (re.compile(r"\b(?:[sr]k_(?:live|test)|whsec)_[A-Za-z0-9]+"), REDACTED),
)


def redact(text: str) -> str:
    """The text without the fragments above (unchanged text is returned as is)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _postgres_error(failure: BaseException) -> asyncpg.PostgresError | None:
    """The PostgreSQL error behind `failure`: itself, SQLAlchemy's `.orig`, or a cause."""
    seen: set[int] = set()
    current: BaseException | None = failure
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.PostgresError):
            return current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            current = orig
            continue
        current = current.__cause__ or current.__context__
    return None


def failure_reason(failure: BaseException, limit: int = 500) -> str:
    """`ClassName: message`; for a PostgreSQL error its SQLSTATE and primary message
    only, never its DETAIL (row and key values) or the statement's parameters."""
    database = _postgres_error(failure)
    if database is not None:
        message = str(getattr(database, "message", None) or "").split("\n", 1)[0]
        sqlstate = getattr(database, "sqlstate", None) or "?"
        text = f"{type(database).__name__} (SQLSTATE {sqlstate}): {message}"
    else:
        text = f"{type(failure).__name__}: {failure}"
    return redact(text)[:limit]


# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class RedactingFilter(logging.Filter):
    """Scrubs a record's message, exception text, stack and string extras in place.

    Installed on the process's handlers, and as the record factory so that handlers we
    do not own (FastStream's, uvicorn's) get scrubbed records too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        scrub(record)
        return True


def scrub(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to the handler to report
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:  # formatters re-render exc_info; hand them the clean text instead
            record.exc_info, record.exc_text = None, clean
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for key, value in list(vars(record).items()):
        if key not in _STANDARD and isinstance(value, str):
            setattr(record, key, redact(value))
    return record


def install_record_factory() -> None:
    """Scrub every record as it is made, whichever handler ends up writing it."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_billing_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub(current(*args, **kwargs))

    factory._billing_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
