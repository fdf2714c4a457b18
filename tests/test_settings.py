"""Settings: contract names, safe defaults, unsafe combinations refused, no secret logged."""

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.clock import system_clock_ms
from app.errors import ConfigError
from app.observability.startup import describe_configuration, host_of
from app.runtime import build_runtime
from app.settings import Settings, StorageKind, load_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def build(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_are_the_contract() -> None:
    settings = build()
    assert settings.storage_kind is StorageKind.EMBEDDED
    assert settings.resend_api_url == "https://api.resend.com"
    assert settings.app_url == "http://localhost:3000"
    assert settings.public_url is None  # links use the address served on: `links_url`
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.links_url == "http://127.0.0.1:8000"
    assert settings.loops_dir == Path("loops")
    assert settings.worker_in_process is True
    assert settings.key_prefix == "activation:"
    assert settings.clerk_webhook_signing_secret is None
    assert settings.activation_api_key is None


def test_environment_variables_use_the_contract_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://eu1-x.upstash.io/")
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "tok")
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379")
    monkeypatch.setenv("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("KEY_PREFIX", "acme:")
    monkeypatch.setenv("WORKER_IN_PROCESS", "false")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.storage_kind is StorageKind.UPSTASH  # Upstash REST wins over REDIS_URL
    assert settings.upstash_redis_rest_url == "https://eu1-x.upstash.io"
    assert settings.key_prefix == "acme:"
    assert settings.worker_in_process is False


def test_worker_concurrency_reaches_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build().worker_concurrency == 10
    monkeypatch.setenv("WORKER_CONCURRENCY", "3")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert build_runtime(settings, system_clock_ms).worker.config.concurrency == 3


def test_redis_url_alone_chooses_tcp() -> None:
    settings = build(redis_url="rediss://default:pw@x.upstash.io:6379")
    assert settings.storage_kind is StorageKind.REDIS


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("REDIS_URL=redis://127.0.0.1:6390/0\nCLERK_WEBHOOK_SIGNING_SECRET=\n")
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.storage_kind is StorageKind.REDIS
    assert settings.clerk_webhook_signing_secret is None  # empty means unset


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"upstash_redis_rest_url": "https://x.upstash.io"}, "UPSTASH_REDIS_REST_TOKEN is not"),
        ({"upstash_redis_rest_token": "t"}, "UPSTASH_REDIS_REST_URL is not"),
        ({"resend_api_key": "re_123"}, "EMAIL_FROM is required"),
        ({"clerk_webhook_signing_secret": "whsec_!!!"}, "signing secret"),
        ({"clerk_webhook_signing_secret": "whsec_"}, "signing secret"),
        ({"key_prefix": "a{b}:"}, "KEY_PREFIX"),
        ({"storage_timeout_s": 0}, "greater than 0"),
        ({"webhook_dedupe_ttl_s": 3600}, "greater than or equal"),
        ({"worker_concurrency": 0}, "greater than or equal"),
        # one send (10 s + a storage call on each side) could outlive a 20 s lease
        ({"worker_lease_s": 20}, r"WORKER_LEASE_S \(20\) must be at least twice"),
        ({"resend_timeout_s": 30}, "RESEND_TIMEOUT_S"),
    ],
)
def test_unsafe_configuration_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build(**values)


def test_signing_secret_without_prefix_or_padding_is_accepted() -> None:
    assert build(clerk_webhook_signing_secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert build(clerk_webhook_signing_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw==")


def test_startup_refuses_bad_environment_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("RESEND_API_KEY", "re_live_secret")
    with pytest.raises(ConfigError, match="EMAIL_FROM is required") as raised:
        load_settings()
    assert "re_live_secret" not in str(raised.value)


def test_summary_of_the_embedded_default_is_a_loud_warning() -> None:
    level, _, text = describe_configuration(build())
    assert level == logging.WARNING
    assert "NOT persisted" in text
    assert "outbox" in text
    assert "POST /webhooks/clerk answers 503" in text
    assert "/v1/* refuses every request" in text


def test_summary_names_hosts_but_never_secrets() -> None:
    settings = build(
        redis_url="rediss://default:redis-password@eu1-x.upstash.io:6379",
        resend_api_key="re_secret_key",
        email_from="Acme <hello@acme.dev>",
        clerk_webhook_signing_secret=SECRET,
        activation_api_key="api-secret",
        public_url="https://loops.acme.dev",
    )
    level, _, text = describe_configuration(settings)
    assert level == logging.INFO
    assert "rediss://eu1-x.upstash.io:6379" in text
    for secret in ("redis-password", "re_secret_key", SECRET, "api-secret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("host", "port", "links_url"),
    [
        ("127.0.0.1", 53117, "http://127.0.0.1:53117"),
        ("loops.internal", 9000, "http://loops.internal:9000"),
        ("0.0.0.0", 53117, "http://localhost:53117"),  # every interface: none a link can name
        ("::", 8000, "http://localhost:8000"),
        ("::1", 8000, "http://[::1]:8000"),
        ("[::1]", 8000, "http://[::1]:8000"),
    ],
)
def test_without_public_url_links_use_the_address_served_on(
    host: str, port: int, links_url: str
) -> None:
    assert build(host=host, port=port).links_url == links_url
    assert build(host=host, port=port, public_url="https://loops.acme.dev/").links_url == (
        "https://loops.acme.dev"
    )


def test_host_port_and_an_empty_public_url_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "53117")
    monkeypatch.setenv("PUBLIC_URL", "")  # `PUBLIC_URL=` in a .env: unset
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.host, settings.port, settings.public_url) == ("0.0.0.0", 53117, None)
    assert settings.links_url == "http://localhost:53117"
    monkeypatch.setenv("PORT", "0")
    with pytest.raises(ValidationError, match="port"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_summary_says_where_links_point() -> None:
    _, _, served = describe_configuration(build(port=53117))
    assert "no PUBLIC_URL, so unsubscribe links start http://127.0.0.1:53117" in served
    _, _, everywhere = describe_configuration(build(host="0.0.0.0", port=53117))
    assert "links start http://localhost:53117: the web app serves on every interface" in everywhere
    _, _, public = describe_configuration(build(public_url="https://loops.acme.dev"))
    assert "unsubscribe links start https://loops.acme.dev (PUBLIC_URL)" in public


def test_real_email_with_links_to_this_machine_is_a_warning() -> None:
    settings = build(
        redis_url="redis://127.0.0.1:6379", resend_api_key="re_x", email_from="a@acme.dev"
    )
    level, _, text = describe_configuration(settings)
    assert level == logging.WARNING
    assert "set PUBLIC_URL to the address your users reach" in text


def test_every_unsafe_combination_is_named_at_once() -> None:
    with pytest.raises(ValidationError) as raised:
        build(upstash_redis_rest_url="https://x.upstash.io", resend_api_key="re_x")
    message = str(raised.value)
    assert "UPSTASH_REDIS_REST_TOKEN is not" in message
    assert "EMAIL_FROM is required when RESEND_API_KEY is set" in message


def test_host_of_drops_credentials_and_paths() -> None:
    assert host_of("https://user:pw@x.upstash.io/path?token=1") == "https://x.upstash.io"


def test_a_configuration_error_at_startup_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    """uvicorn as `make run` starts it, with RESEND_API_KEY but no EMAIL_FROM: the server says
    what to fix in one line (no traceback through the lifespan) and exits non-zero."""
    import os
    import subprocess
    import sys

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RESEND_", "EMAIL_", "REDIS_", "UPSTASH_", "CLERK_"))
    }
    env |= {"RESEND_API_KEY": "re_test", "LOOPS_DIR": str(Path("loops").resolve())}
    uvicorn = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"]
    done = subprocess.run(
        uvicorn, cwd=tmp_path, env=env | {"PYTHONPATH": str(Path.cwd())},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert errors[0].endswith(
        "activation-loops cannot start: invalid configuration: "
        "EMAIL_FROM is required when RESEND_API_KEY is set"
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 4, done.stderr


def test_env_example_copied_with_a_resend_key_still_asks_for_email_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`cp .env.example .env`, then RESEND_API_KEY filled in and EMAIL_FROM forgotten: refused,
    not sent from the example's sender (which no Resend account has verified)."""
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    (tmp_path / ".env").write_text(example.replace("RESEND_API_KEY=\n", "RESEND_API_KEY=re_x\n"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="EMAIL_FROM is required when RESEND_API_KEY is set"):
        load_settings()
