"""Log output: LOG_FORMAT=json gives one JSON object per line; addresses never leave unmasked."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.observability.logs import JsonFormatter, MaskAddresses, build_handler, mask_addresses
from app.observability.startup import LOG_FORMAT
from app.settings import Settings
from tests.support.processes import activation, env_for, seed_activated_user


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing through a JSON handler into a string."""
    stream = io.StringIO()
    handler = build_handler("json", LOG_FORMAT)
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logger = logging.getLogger("app.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("ada@example.org", "a***@example.org"),
        ("to Ada <ada.lovelace+loops@mail.example.co.uk>.", "to Ada <a***@mail.example.co.uk>."),
        ("a@b.io and zed@c.dev", "a***@b.io and z***@c.dev"),
        ("a***@example.org", "a***@example.org"),  # masking twice changes nothing
        (
            "rediss://default:hunter2@eu1.upstash.io:6379",
            "rediss://default:h***@eu1.upstash.io:6379",
        ),
        ("email|user_2x|activation|0|action", "email|user_2x|activation|0|action"),
        ("delivery=msg_2aQf9 at 10:00 @here", "delivery=msg_2aQf9 at 10:00 @here"),
    ],
)
def test_addresses_are_masked(text: str, masked: str) -> None:
    assert mask_addresses(text) == masked


def test_json_lines_carry_time_level_logger_message_and_extra_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("email %s sent (attempt %d)", "email|user_1|welcome|0|action", 1, extra={"job": 7})

    [line] = lines(stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "app.test_logs"
    assert line["message"] == "email email|user_1|welcome|0|action sent (attempt 1)"
    assert line["job"] == 7
    assert str(line["time"]).endswith("+00:00")


def test_json_lines_mask_addresses_in_message_extras_and_tracebacks(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    try:
        raise ValueError("no mailbox ada@example.org")
    except ValueError:
        logger.exception("send to %s failed", "ada@example.org", extra={"to": "bob@example.org"})

    [line] = lines(stream)
    assert line["message"] == "send to a***@example.org failed"
    assert line["to"] == "b***@example.org"
    assert "no mailbox a***@example.org" in str(line["exception"])
    assert "ada@example.org" not in stream.getvalue()


@pytest.mark.parametrize(
    ("message", "args", "expected"),
    [
        ("bounce from %s (%d)", ("ada@example.org", 550), "bounce from a***@example.org (550)"),
        # an address inside a non-string argument; a number stays a number for %d
        (
            "%s failed %d times",
            (ValueError("no mailbox ada@example.org"), 3),
            "no mailbox a***@example.org failed 3 times",
        ),
        ("to ada@example.org", (), "to a***@example.org"),
    ],
)
def test_the_filter_masks_the_final_text_message(
    message: str, args: tuple[object, ...], expected: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskAddresses())
    logger = logging.getLogger("app.test_logs.text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert stream.getvalue() == f"WARNING {expected}\n"


def test_json_formatter_keeps_non_string_extras() -> None:
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hi", None, None)
    record.count = 3
    assert json.loads(JsonFormatter().format(record))["count"] == 3


def test_log_format_setting_accepts_text_and_json_only() -> None:
    assert Settings(_env_file=None).log_format == "text"  # type: ignore[call-arg]
    assert Settings(_env_file=None, log_format="json").log_format == "json"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="log_format"):
        Settings(_env_file=None, log_format="xml")  # type: ignore[call-arg]


def test_the_worker_logs_json_lines_with_no_address(redis_url: str, key_prefix: str) -> None:
    seed_activated_user(redis_url, key_prefix)
    env = env_for(redis_url, key_prefix, LOG_FORMAT="json")
    result = activation("worker", "--burst", env=env)

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    messages = [entry["message"] for entry in entries]
    assert "burst: 1 job(s) run" in messages
    assert any("e***@example.org" in message for message in messages)  # the outbox line
    assert "example@example.org" not in result.stderr


def test_uvicorns_own_access_log_keeps_its_line_with_the_token_redacted() -> None:
    """uvicorn's access formatter reads the client, method and path from `record.args`: the
    filter must leave that tuple in place (it used to set it to None: a '--- Logging error ---'
    traceback on every /unsubscribe, and no access line)."""
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    from app.observability.startup import configure_logging

    stream = io.StringIO()
    config = {**LOGGING_CONFIG, "disable_existing_loggers": False}
    logging.config.dictConfig(config)
    access = logging.getLogger("uvicorn.access")
    handler = access.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(stream)
    errors = io.StringIO()
    try:
        configure_logging("INFO")
        import contextlib

        with contextlib.redirect_stderr(errors):
            access.info(
                '%s - "%s %s HTTP/%s" %d',
                "127.0.0.1:5000", "GET", "/unsubscribe?token=abc.def&x=1", "1.1", 200,
            )  # fmt: skip
    finally:
        handler.setStream(previous)
        for known in list(access.filters):
            access.removeFilter(known)
    line = stream.getvalue()
    assert '"GET /unsubscribe?token=REDACTED&x=1 HTTP/1.1" 200' in line
    assert "abc.def" not in line
    assert "Logging error" not in errors.getvalue()
