"""The service's configuration: one pydantic-settings class, read from the environment and `.env`.

Built once by the entry points (`create_app`, the command line's `load_settings`) and passed
down; nothing else reads `os.environ` (`activation serve` only writes HOST and PORT into it, for
the app it starts). Unsafe combinations are refused at startup with a message naming the variable.
"""

import base64
import binascii
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    SettingsConfigDict,
)

from app.clock import is_off, parse_duration, parse_time_window
from app.errors import ConfigError


class StorageKind(StrEnum):
    UPSTASH = "upstash"
    REDIS = "redis"
    EMBEDDED = "embedded"


class Settings(BaseSettings):
    """Every setting, named as its environment variable (upper-cased)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    clerk_webhook_signing_secret: SecretStr | None = None
    resend_webhook_secret: SecretStr | None = None
    metrics_token: SecretStr | None = None
    upstash_redis_rest_url: str | None = None
    upstash_redis_rest_token: SecretStr | None = None
    redis_url: SecretStr | None = None
    resend_api_key: SecretStr | None = None
    resend_api_url: str = "https://api.resend.com"
    email_from: str | None = None
    activation_api_key: SecretStr | None = None
    unsubscribe_secret: SecretStr | None = None
    resend_rate_limit_per_s: float = Field(default=5.0, ge=0)
    resend_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # the longest a webhook step's POST may take, whole (None: RESEND_TIMEOUT_S's)
    webhook_timeout_s: float | None = Field(default=None, gt=0, le=120)
    app_url: str = "http://localhost:3000"
    public_url: str | None = None  # None: links use the address served on (`links_url`)
    # where `activation serve` listens (its --host/--port win), and links' address without
    # PUBLIC_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    loops_dir: Path = Path("loops")
    worker_in_process: bool = True
    key_prefix: str = "activation:"
    storage_timeout_s: float = Field(default=2.0, gt=0, le=30)
    webhook_dedupe_ttl_s: int = Field(default=3 * 24 * 3600, ge=2 * 24 * 3600)
    action_dedupe_ttl_s: int = Field(default=7 * 24 * 3600, ge=3600)
    worker_idle_s: float = Field(default=120.0, ge=1, le=3600)
    worker_lease_s: float = Field(default=60.0, ge=5, le=3600)
    worker_concurrency: int = Field(default=10, ge=1, le=100)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Clerk's Backend API (`activation import-clerk`) and session tokens (actions from browsers)
    clerk_secret_key: SecretStr | None = None
    clerk_api_url: str = "https://api.clerk.com/v1"
    clerk_jwt_key: str | None = None  # the instance's PEM public key (not a secret)
    clerk_jwks_url: str | None = None
    # growth: the most loop emails per user across loops, when none go out, the users' zone
    frequency_cap: str = "off"
    quiet_hours: str | None = None
    default_timezone: str = "UTC"
    browser_actions: Annotated[frozenset[str], NoDecode] = frozenset()
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("browser_actions", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """`a, b` as the environment gives it; a list or set as code gives it."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_without_slash(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(origin.rstrip("/") for origin in value)

    @field_validator(
        "clerk_webhook_signing_secret",
        "clerk_secret_key",
        "upstash_redis_rest_token",
        "redis_url",
        "resend_api_key",
        "activation_api_key",
        "unsubscribe_secret",
        "resend_webhook_secret",
        "metrics_token",
        mode="before",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # `FOO=` in a .env file means "not set", not "the empty secret".
        return None if value == "" else value

    @field_validator(
        "upstash_redis_rest_url",
        "email_from",
        "clerk_jwt_key",
        "clerk_jwks_url",
        "public_url",
        "webhook_timeout_s",
        mode="before",
    )
    @classmethod
    def _empty_text_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "upstash_redis_rest_url", "app_url", "public_url", "resend_api_url", "clerk_api_url"
    )
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        # A trailing slash on the Upstash URL breaks its /pipeline endpoint; links join cleanly too.
        return value.rstrip("/") if value else value

    @field_validator("clerk_webhook_signing_secret")
    @classmethod
    def _signing_secret_is_base64(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _decode_signing_secret(value.get_secret_value())
        return value

    @field_validator("resend_webhook_secret")
    @classmethod
    def _resend_secret_is_base64(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _signing_key(value.get_secret_value()):
            raise ValueError(
                "RESEND_WEBHOOK_SECRET must be the webhook's signing secret, whsec_ followed by "
                "base64 (Resend dashboard: Webhooks > your endpoint > Signing secret)"
            )
        return value

    @field_validator("frequency_cap")
    @classmethod
    def _cap_is_rules(cls, value: str) -> str:
        parse_cap_rules(value)
        return value

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet_hours_is_a_window(cls, value: object) -> object:
        if value == "" or (isinstance(value, str) and is_off(value)):
            return None
        if isinstance(value, str):
            parse_time_window(value)
        return value

    @field_validator("default_timezone")
    @classmethod
    def _timezone_is_known(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone like Europe/Berlin") from None
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_has_no_hash_tag(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("KEY_PREFIX must not contain { or }: keys carry their own hash tag")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_combinations(self) -> Self:
        """Every unsafe combination named at once, in one message."""
        problems = [*self._half_configured(), *lease_shorter_than_an_attempt(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _half_configured(self) -> list[str]:
        problems = []
        if self.upstash_redis_rest_url and self.upstash_redis_rest_token is None:
            problems.append("UPSTASH_REDIS_REST_URL is set but UPSTASH_REDIS_REST_TOKEN is not")
        if self.upstash_redis_rest_token is not None and not self.upstash_redis_rest_url:
            problems.append("UPSTASH_REDIS_REST_TOKEN is set but UPSTASH_REDIS_REST_URL is not")
        if self.resend_api_key is not None and not self.email_from:
            problems.append("EMAIL_FROM is required when RESEND_API_KEY is set")
        return problems

    @property
    def webhook_timeout(self) -> float:
        """A webhook step's POST's bound: WEBHOOK_TIMEOUT_S, else RESEND_TIMEOUT_S."""
        return self.webhook_timeout_s or self.resend_timeout_s

    @property
    def links_url(self) -> str:
        """The base of the links emails carry (unsubscribe): PUBLIC_URL, else the address this
        service serves on (`served_url`)."""
        return self.public_url or served_url(self.host, self.port)

    @property
    def cap_rules(self) -> tuple[tuple[int, int], ...]:
        """FREQUENCY_CAP as (emails, window ms) pairs; () for `off`."""
        return parse_cap_rules(self.frequency_cap)

    @property
    def storage_kind(self) -> StorageKind:
        if self.upstash_redis_rest_url:
            return StorageKind.UPSTASH
        if self.redis_url is not None:
            return StorageKind.REDIS
        return StorageKind.EMBEDDED


_CAP_RULE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+[smhdw])\s*")


def parse_cap_rules(text: str) -> tuple[tuple[int, int], ...]:
    """FREQUENCY_CAP, `"2/1d,4/7d"` (emails per window, each rule held at once) or `off`, as
    (emails, window ms) pairs; ValueError naming the part that is wrong."""
    if is_off(text):
        return ()
    rules = []
    for part in text.split(","):
        match = _CAP_RULE.fullmatch(part)
        if match is None or int(match[1]) < 1:
            raise ValueError(f"{part.strip()!r} is not a cap like 2/1d (emails per window) or off")
        rules.append((int(match[1]), parse_duration(match[2])))
    return tuple(rules)


def lease_shorter_than_an_attempt(settings: Settings) -> list[str]:
    """One send attempt (a rate-limit wait of at most a quarter of the lease, the request,
    a storage call on either side) must end well inside its lease: renewals then only cover
    slow claims, and a worker that misses them is fenced off, never racing a newer one."""
    timeout_s = max(settings.resend_timeout_s, settings.webhook_timeout)
    attempt_s = timeout_s + 2 * settings.storage_timeout_s
    if settings.worker_lease_s >= 2 * attempt_s:
        return []
    name = "RESEND_TIMEOUT_S" if timeout_s == settings.resend_timeout_s else "WEBHOOK_TIMEOUT_S"
    return [
        f"WORKER_LEASE_S ({settings.worker_lease_s:g}) must be at least twice "
        f"{name} + 2 x STORAGE_TIMEOUT_S ({attempt_s:g} s), so a send can "
        "never outlive its lease"
    ]


def environment(settings: Settings) -> dict[str, str]:
    """The variables the settings are read from (`.env`'s, the process environment's over
    them): what a loop file's `${NAME}` references (webhook URLs and secrets) resolve to."""
    env_file = settings.model_config.get("env_file")
    dotenv = dotenv_values(env_file) if isinstance(env_file, str | Path) else {}
    given = {name: value for name, value in dotenv.items() if value is not None}
    return given | dict(os.environ)


def given_settings() -> frozenset[str]:
    """The settings the environment and `.env` give a value (an empty one is none), by field
    name, read without checking any: a command can then name every setting it lacks, even
    beside one that is invalid."""
    given = {**DotEnvSettingsSource(Settings)(), **EnvSettingsSource(Settings)()}
    return frozenset(name for name, value in given.items() if value not in (None, ""))


# Addresses that mean "every interface": a server listens on them, but no link can name them.
EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (recognised, never bound)


def listens_everywhere(host: str) -> bool:
    return host.strip("[]") in EVERY_INTERFACE


def served_url(host: str, port: int) -> str:
    """`http://host:port` as a browser reaches the server. One listening on every interface
    (0.0.0.0, ::) is written `localhost`: the machine's hostname would serve a reader elsewhere
    no better (in a container it is an id that resolves nowhere), and localhost at least opens
    on this machine, where a trial without PUBLIC_URL runs."""
    bare = "localhost" if listens_everywhere(host) else host.strip("[]")
    return f"http://[{bare}]:{port}" if ":" in bare else f"http://{bare}:{port}"


def _signing_key(secret: str) -> bytes:
    """The key of a Svix `whsec_<base64>` secret; empty when it is not one."""
    raw = secret.removeprefix("whsec_").rstrip("=")
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        return b""


def _decode_signing_secret(secret: str) -> bytes:
    decoded = _signing_key(secret)
    if not decoded:
        raise ValueError(
            "CLERK_WEBHOOK_SIGNING_SECRET must be the endpoint's signing secret, whsec_ followed "
            "by base64 (copy it from Clerk's dashboard: Webhooks > your endpoint > Signing Secret)"
        )
    return decoded


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_validation(exc)}") from None


def describe_validation(exc: ValidationError) -> str:
    """Each error once: the variable's name, unless the message says it already (pydantic's
    `Value error, ` prefix left out)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where and where not in message else message)
    return "; ".join(parts)
