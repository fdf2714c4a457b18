"""Log output: `LOG_FORMAT=json` (one JSON object per line) and the email-address masking filter.

The masking filter is a safety net, not the policy: code logs user ids and job ids, never
addresses, tokens or email bodies; whatever slips through still leaves as `a***@example.org`.
"""

import json
import logging
import re
from collections.abc import Callable, Mapping
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


def rewrite(record: logging.LogRecord, change: Callable[[str], str]) -> None:
    """Apply `change` to a record's text, keeping its shape: the string arguments each, else the
    message. Formatters that read the arguments themselves (uvicorn's access log takes the
    client, method, path... from `record.args`) must still find them where they were."""
    args = record.args
    if isinstance(args, tuple) and args:
        record.args = tuple(_changed(arg, change) for arg in args)
    elif isinstance(args, Mapping) and args:
        record.args = {key: _changed(value, change) for key, value in args.items()}
    if isinstance(record.msg, str):
        changed = change(record.msg)
        if not args or changed.count("%") == record.msg.count("%"):  # placeholders kept
            record.msg = changed


def _changed(arg: Any, change: Callable[[str], str]) -> Any:
    """An argument with its text changed; one whose text needs no change keeps its type (a
    number stays a number for `%d`), one that does becomes that text (an exception, say)."""
    text = arg if isinstance(arg, str) else str(arg)
    changed = change(text)
    return arg if changed == text else changed


class MaskAddresses(logging.Filter):
    """Masks every email address in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        rewrite(record, mask_addresses)
        return True


QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Blanks `token=` query values (unsubscribe links) in a record's final message: the access
    log prints every path, and a token in a log pipeline is a working unsubscribe link."""

    def filter(self, record: logging.LogRecord) -> bool:
        rewrite(record, redact_tokens)
        return True


def redact_tokens(text: str) -> str:
    return QUERY_TOKEN.sub(r"\1REDACTED", text)


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
