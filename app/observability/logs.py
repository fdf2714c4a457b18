"""Log output: `LOG_FORMAT=json` (one JSON object per line) and the email-address masking filter.

The masking filter is a safety net, not the policy: code logs user ids and job ids, never
addresses, tokens or email bodies; whatever slips through still leaves as `a***@example.org`.
"""

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

EMAIL_ADDRESS = re.compile(
    r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9_%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
# what every LogRecord has; anything else on a record came from `extra=` and is logged as a field
STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def mask_addresses(text: str) -> str:
    """`ada@example.org` -> `a***@example.org`, wherever it appears in the text."""
    return EMAIL_ADDRESS.sub(r"\1***@\2", text)


class MaskAddresses(logging.Filter):
    """Rewrites a record's final message with every email address masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_addresses(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Blanks `token=` query values (unsubscribe links) in a record's final message: the access
    log prints every path, and a token in a log pipeline is a working unsubscribe link."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = QUERY_TOKEN.sub(r"\1REDACTED", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, and
    `exception` when there is one. String values are masked like the message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_addresses(record.getMessage()),
        }
        entry.update(extra_fields(record))
        if record.exc_info:
            entry["exception"] = mask_addresses(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, separators=(",", ":"))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {}
    for name, value in record.__dict__.items():
        if name not in STANDARD_ATTRIBUTES and not name.startswith("_"):
            fields[name] = mask_addresses(value) if isinstance(value, str) else value
    return fields


def build_handler(log_format: str, text_format: str) -> logging.Handler:
    """A stderr handler in the given format, with the masking filter."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(text_format))
    handler.addFilter(MaskAddresses())
    return handler
