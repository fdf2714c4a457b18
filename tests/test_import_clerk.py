"""`activation import-clerk`: Clerk's existing users, read through the real `clerk-backend-api` SDK
from the Clerk stand-in (`tests/standins/clerk.py`) and recorded on the Redis and Upstash
transports, as an operator runs the command."""

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from app.cli.clerk_users import MAX_WAIT_S, clerk_users
from app.cli.import_clerk import Outcome, Progress, Tally, parse_since
from app.cli.main import main
from app.settings import Settings
from tests.conftest import (
    AUTH,
    SHIPPED_LOOPS,
    FakeClock,
    clerk_event,
    post_webhook,
    running,
    worker_of,
)
from tests.standins.clerk import SECRET_KEY, ClerkStandin, clerk_user, run_standin
from tests.support.constants import MIN
from tests.support.storage import clear_storage_env

# The SDK reads every query parameter of `users.list`, its own deprecated `last_active_at_since`
# too, and pydantic warns of that read: the SDK's business, not a use of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:clerk_backend_api.utils.queryparams"
)

BASE_MS = 1_760_000_000_000  # when the first stand-in user signed up


@pytest.fixture(params=["redis", "upstash"])
def transport(request: pytest.FixtureRequest) -> str:
    """Shared storage only: the command refuses the embedded store."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def clerk_server() -> Iterator[ClerkStandin]:
    with run_standin() as standin:
        yield standin


@pytest.fixture
def clerk(clerk_server: ClerkStandin) -> ClerkStandin:
    """The stand-in with 250 users, one a minute, each updated a second after signing up."""
    clerk_server.reset([person(i) for i in range(250)])
    return clerk_server


def person(i: int, **fields: Any) -> dict[str, Any]:
    created_at = BASE_MS + i * MIN
    return clerk_user(
        f"user_import{i:04d}",
        created_at=created_at,
        updated_at=fields.pop("updated_at", created_at + 1000),
        email=f"person{i}@example.org",
        first_name=f"Person{i}",
        **fields,
    )


@pytest.fixture
def settings(make_settings: Callable[..., Settings], loops_dir: Path) -> Settings:
    """The small loops folder: `welcome` (activation: on signup) and `ten` (10 projects)."""
    return make_settings(loops_dir=loops_dir)


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings, clerk: ClerkStandin
) -> None:
    """The command's environment: the test's storage and key prefix, the stand-in's key and URL."""
    monkeypatch.chdir(tmp_path)  # no .env here
    clear_storage_env(monkeypatch)
    if settings.redis_url is not None:
        monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    if settings.upstash_redis_rest_url and settings.upstash_redis_rest_token:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", settings.upstash_redis_rest_url)
        token = settings.upstash_redis_rest_token.get_secret_value()
        monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", token)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("LOOPS_DIR", str(settings.loops_dir))
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("CLERK_API_URL", clerk.url)


async def import_clerk(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `activation import-clerk ARGS` (in a thread: it runs its own event loop); its exit
    status, stdout and stderr."""
    status = await asyncio.to_thread(main, ["import-clerk", *args])
    out, err = capsys.readouterr()
    return status, out.strip(), err.strip()


def stored(redis_url: str, key_prefix: str) -> dict[str, Any]:
    """Every key of the test's prefix with its value: what storage holds, to compare."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found: dict[str, Any] = {}
        for key in sorted(client.scan_iter(f"{key_prefix}*")):
            kind = client.type(key)
            if kind == "hash":
                found[key] = client.hgetall(key)
            elif kind == "zset":
                found[key] = client.zrange(key, 0, -1, withscores=True)
            else:
                found[key] = kind
        return found
    finally:
        client.close()


async def user_state(http: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/users/{user_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def step_status(body: dict[str, Any], loop_id: str) -> str:
    loop = next(loop for loop in body["loops"] if loop["loop"] == loop_id)
    status: str = loop["steps"][0]["status"]
    return status


SUMMARY_250 = "imported 250, updated 0, unchanged 0, skipped (deleted) 0"


@pytest.mark.usefixtures("cli_env")
async def test_imports_every_user_page_by_page_and_a_rerun_changes_nothing(
    clerk: ClerkStandin,
    settings: Settings,
    clock: FakeClock,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await import_clerk(capsys) == (0, SUMMARY_250, "")
    assert clerk.page_requests() == [
        f"/v1/users?limit=100&offset={offset}&order_by=-created_at" for offset in (0, 100, 200)
    ]
    async with running(settings, clock) as (_, http):
        for i in (0, 149, 249):
            body = await user_state(http, f"user_import{i:04d}")
            assert body["profile"]["email"] == f"person{i}@example.org"
            assert body["profile"]["first_name"] == f"Person{i}"
            assert body["profile"]["created_at"] == BASE_MS + i * MIN
            assert body["registered_at"] is None  # not a signup: no activation loop starts
    before = stored(redis_url, settings.key_prefix)

    status, out, _ = await import_clerk(capsys)

    assert (status, out) == (0, "imported 0, updated 0, unchanged 250, skipped (deleted) 0")
    assert stored(redis_url, settings.key_prefix) == before


async def record_webhook(http: httpx.AsyncClient, kind: str, user_id: str, **data: Any) -> None:
    body = json.dumps(clerk_event(kind, user_id, **data)).encode()
    response = await post_webhook(http, body)
    assert response.status_code == 200, response.text


@pytest.mark.usefixtures("cli_env")
async def test_newer_stored_data_is_kept_older_is_updated_and_deleted_users_stay_deleted(
    clerk: ClerkStandin, settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.reset([person(i) for i in range(4)])
    clerk_updated_at = BASE_MS + 1000  # person 0's updated_at at Clerk
    async with running(settings, clock) as (_, http):
        # person 0: a webhook newer than what the API lists; person 1: older; person 2: deleted
        await record_webhook(
            http, "updated", "user_import0000", first_name="Newer", updated_at=clerk_updated_at + 1
        )
        await record_webhook(
            http, "updated", "user_import0001", first_name="Older", updated_at=BASE_MS
        )
        await record_webhook(http, "created", "user_import0002")
        await record_webhook(http, "deleted", "user_import0002")

    status, out, _ = await import_clerk(capsys)

    assert (status, out) == (0, "imported 1, updated 1, unchanged 1, skipped (deleted) 1")
    async with running(settings, clock) as (_, http):
        assert (await user_state(http, "user_import0000"))["profile"]["first_name"] == "Newer"
        assert (await user_state(http, "user_import0001"))["profile"]["first_name"] == "Person1"
        assert (await user_state(http, "user_import0003"))["profile"]["first_name"] == "Person3"
        response = await http.get("/v1/users/user_import0002", headers=AUTH)
        assert response.status_code == 404  # the tombstone holds: no personal data came back


async def post_projects(http: httpx.AsyncClient, user_id: str, count: int) -> None:
    actions = [
        {"user_id": user_id, "action": "project_created", "id": f"p{n}"} for n in range(count)
    ]
    response = await http.post("/v1/actions", json={"actions": actions}, headers=AUTH)
    assert response.status_code == 202, response.text


@pytest.mark.usefixtures("cli_env")
async def test_imported_users_enter_no_activation_loop_but_milestones_fire(
    clerk: ClerkStandin, settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.reset([person(i) for i in range(3)])
    status, out, _ = await import_clerk(capsys)
    assert (status, out) == (0, "imported 3, updated 0, unchanged 0, skipped (deleted) 0")
    async with running(settings, clock) as (app, http):
        await worker_of(app).drain()
        clock.advance(10 * MIN)  # past the welcome's 5-minute timeout: no nudge either
        await worker_of(app).drain()
        for i in range(3):
            body = await user_state(http, f"user_import{i:04d}")
            assert step_status(body, "welcome") == "not_started"
            assert body["emails"] == []

        await post_projects(http, "user_import0001", 10)
        await worker_of(app).drain()

        body = await user_state(http, "user_import0001")
        assert step_status(body, "ten") == "fired"
        emails = [(e["loop"], e["template"], e["status"]) for e in body["emails"]]
        assert emails == [("ten", "ten", "sent")]  # to the outbox: the profile has the address
        assert step_status(body, "welcome") == "not_started"


@pytest.mark.usefixtures("cli_env")
async def test_enter_loops_records_them_as_signups_and_activation_loops_start(
    clerk: ClerkStandin, settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.reset([person(i) for i in range(3)])
    status, out, _ = await import_clerk(capsys, "--enter-loops")
    assert (status, out) == (0, "imported 3, updated 0, unchanged 0, skipped (deleted) 0")
    clock.now_ms = int(time.time() * 1000)  # registered by the import: on Redis's clock, now
    async with running(settings, clock) as (app, http):
        await worker_of(app).drain()
        body = await user_state(http, "user_import0002")
        assert body["registered_at"] is not None
        assert step_status(body, "welcome") == "waiting"

        clock.advance(6 * MIN)  # the welcome's 5-minute timeout: the nudge
        await worker_of(app).drain()
        body = await user_state(http, "user_import0002")
        assert [(e["loop"], e["template"]) for e in body["emails"]] == [("welcome", "nudge")]
    # a re-run registers no one twice
    assert (await import_clerk(capsys, "--enter-loops"))[1] == (
        "imported 0, updated 0, unchanged 3, skipped (deleted) 0"
    )


@pytest.mark.usefixtures("cli_env")
async def test_enter_loops_after_a_plain_import_registers_them(
    clerk: ClerkStandin, settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.reset([person(i) for i in range(2)])
    await import_clerk(capsys)
    status, out, _ = await import_clerk(capsys, "--enter-loops")
    assert (status, out) == (0, "imported 0, updated 2, unchanged 0, skipped (deleted) 0")
    clock.now_ms = int(time.time() * 1000)
    async with running(settings, clock) as (app, http):
        await worker_of(app).drain()
        assert step_status(await user_state(http, "user_import0001"), "welcome") == "waiting"


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_a_429_is_waited_out_and_the_same_page_asked_again(
    clerk: ClerkStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.rate_limit(1, retry_after_s=1)
    started = time.monotonic()

    status, out, err = await import_clerk(capsys)

    assert (status, out) == (0, SUMMARY_250)
    assert time.monotonic() - started >= 1.0
    assert "Clerk answered 429 (rate limited): waiting 1 s, then users 1-100 again" in err
    first_page = "/v1/users?limit=100&offset=0&order_by=-created_at"
    assert clerk.page_requests()[:2] == [first_page, first_page]
    assert len(clerk.page_requests()) == 4


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_endless_429s_stop_the_import_with_one_line(
    clerk: ClerkStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.rate_limit(20, retry_after_s=0.1)
    status, _, err = await import_clerk(capsys)
    assert status == 1
    assert err.splitlines()[-1].startswith("activation import-clerk: Clerk answered 429")
    assert len(clerk.page_requests()) == 11  # the first try and 10 retries


@pytest.mark.parametrize("transport", ["redis"])
async def test_a_long_retry_after_is_capped_and_the_wait_said(
    clerk: ClerkStandin, settings: Settings
) -> None:
    clerk.reset([person(i) for i in range(3)])
    clerk.rate_limit(1, retry_after_s=3600)
    clerk.fail(1, 503, retry_after_s=3600)
    clerk.fail(1, 502)  # no Retry-After: the backoff's 4 s, capped too
    given = {"clerk_secret_key": SecretStr(SECRET_KEY), "clerk_api_url": clerk.url}
    with_key = settings.model_copy(update=given)
    notes: list[str] = []

    async with clerk_users(with_key, notes.append) as default:
        assert default.wait_s(3600, tries=0) == MAX_WAIT_S == 60  # what the command waits at most
    async with clerk_users(with_key, notes.append, max_wait_s=0.2) as users:
        page = await users.page(0)

    assert [user.id for user in page.users] == [f"user_import{i:04d}" for i in (2, 1, 0)]
    assert notes == [
        "Clerk answered 429 (rate limited): waiting 0.2 s (Retry-After asked 3600 s), then users "
        "1-100 again",
        "Clerk answered 503: waiting 0.2 s (Retry-After asked 3600 s), then users 1-100 again",
        "Clerk answered 502: waiting 0.2 s, then users 1-100 again",
    ]
    assert len(clerk.page_requests()) == 4


def unreadable(i: int) -> dict[str, Any]:
    """Person i as the SDK's model cannot read it, each fault quoting their own data: an email
    address where the verification object belongs (the SDK raises a bare ValueError quoting it),
    or a name in a list (pydantic's error quotes the input)."""
    user = person(i)
    if i % 2:
        user["first_name"] = [f"Person{i}"]
    else:
        user["email_addresses"][0]["verification"] = f"person{i}@example.org"
    return user


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_users_the_sdk_cannot_read_are_skipped_counted_and_never_printed(
    clerk: ClerkStandin, settings: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk.reset([unreadable(i) if i in (42, 107) else person(i) for i in range(150)])

    status, out, err = await import_clerk(capsys)

    assert (status, out) == (
        0,
        "imported 148, updated 0, unchanged 0, skipped (deleted) 0, skipped (unreadable) 2",
    )
    assert err.splitlines() == [
        "user user_import0107 skipped: the SDK cannot read it (first_name: string_type)",
        "user user_import0042 skipped: the SDK cannot read it",
    ]
    for data in ("person42@", "Person42", "person107@", "Person107"):
        assert data not in out + err
    async with running(settings, clock) as (_, http):
        for i in (0, 41, 43, 106, 108, 149):
            assert (await user_state(http, f"user_import{i:04d}"))["profile"]["first_name"]
        for i in (42, 107):
            response = await http.get(f"/v1/users/user_import{i:04d}", headers=AUTH)
            assert response.status_code == 404


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_a_wrong_key_is_one_line_without_the_key(
    clerk: ClerkStandin,
    settings: Settings,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "sk_test_notTheInstanceKey42"
    monkeypatch.setenv("CLERK_SECRET_KEY", wrong)

    status, out, err = await import_clerk(capsys)

    assert status == 1
    assert err == (
        "activation import-clerk: Clerk refused CLERK_SECRET_KEY (401): set the instance's "
        "secret key, sk_live_... or sk_test_... (Clerk dashboard: API keys)"
    )
    assert wrong not in out + err
    assert stored(redis_url, settings.key_prefix) == {}


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_a_missing_key_is_one_line(
    clerk: ClerkStandin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CLERK_SECRET_KEY")
    status, _, err = await import_clerk(capsys)
    assert status == 1
    assert err.startswith("activation import-clerk: CLERK_SECRET_KEY is not set: set it to")
    assert len(err.splitlines()) == 1
    assert clerk.requests == []


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_since_stops_paging_once_past_it(
    clerk: ClerkStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    # newest first: person 249 .. person 130 are the 120 created at or after person 130
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((BASE_MS + 130 * MIN) / 1000))

    status, out, _ = await import_clerk(capsys, "--since", since)

    assert (status, out) == (0, "imported 120, updated 0, unchanged 0, skipped (deleted) 0")
    assert len(clerk.page_requests()) == 2  # the second page reached past it: no third


@pytest.mark.parametrize("transport", ["redis"])
@pytest.mark.usefixtures("cli_env")
async def test_dry_run_reads_clerk_and_writes_nothing(
    clerk: ClerkStandin,
    settings: Settings,
    clock: FakeClock,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(settings, clock) as (_, http):
        await record_webhook(http, "created", "user_import0007")
        await record_webhook(http, "deleted", "user_import0007")
    before = stored(redis_url, settings.key_prefix)

    status, out, _ = await import_clerk(capsys, "--dry-run", "--enter-loops")

    assert (status, out) == (
        0,
        "dry run, nothing written: imported 249, updated 0, unchanged 0, skipped (deleted) 1",
    )
    assert len(clerk.page_requests()) == 3
    assert stored(redis_url, settings.key_prefix) == before


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import-clerk", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "example:\n  activation import-clerk --dry-run" in help_text
    assert "--enter-loops" in help_text


def test_the_embedded_store_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    clear_storage_env(monkeypatch)
    monkeypatch.setenv("LOOPS_DIR", str(SHIPPED_LOOPS))
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    assert main(["import-clerk"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("activation import-clerk: no shared storage: set REDIS_URL")
    assert len(error.splitlines()) == 1


def no_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither storage nor Clerk's key set, and no .env (but the shipped loops)."""
    monkeypatch.chdir(tmp_path)
    clear_storage_env(monkeypatch)
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)
    monkeypatch.setenv("LOOPS_DIR", str(SHIPPED_LOOPS))


def refusal(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused `activation import-clerk` writes."""
    assert main(["import-clerk"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def test_every_missing_setting_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_settings(monkeypatch, tmp_path)
    error = refusal(capsys)
    assert error.startswith("activation import-clerk: 2 problems: (1) no shared storage: set ")
    assert "; (2) CLERK_SECRET_KEY is not set: set it to the instance's secret key" in error


def test_an_invalid_setting_hides_no_missing_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half the Upstash settings and no key: both named in the one run."""
    no_settings(monkeypatch, tmp_path)
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://eu1-x.upstash.io")
    error = refusal(capsys)
    assert "UPSTASH_REDIS_REST_URL is set but UPSTASH_REDIS_REST_TOKEN is not" in error
    assert "CLERK_SECRET_KEY is not set" in error
    assert "no shared storage" not in error  # Upstash is chosen, only half of it given


def test_a_setting_in_the_dotenv_file_counts_as_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_settings(monkeypatch, tmp_path)
    (tmp_path / ".env").write_text(f"CLERK_SECRET_KEY={SECRET_KEY}\nREDIS_URL=\n")
    error = refusal(capsys)
    assert error.startswith("activation import-clerk: no shared storage: set REDIS_URL")
    assert SECRET_KEY not in error


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("2026-01-15", 1_768_435_200_000),
        ("2026-01-15T12:30:00Z", 1_768_480_200_000),
        ("2026-01-15T14:30:00+02:00", 1_768_480_200_000),
    ],
)
def test_since_takes_a_date_or_an_rfc3339_time(text: str, epoch_ms: int) -> None:
    assert parse_since(text) == epoch_ms


def test_since_refuses_anything_else(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import-clerk", "--since", "last tuesday"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "'last tuesday' is not a date (YYYY-MM-DD) or an RFC 3339 time" in error


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_is_redrawn_in_place() -> None:
    screen = Terminal()
    progress = Progress(screen)
    progress.total = 250
    tally = Tally()
    for count in (100, 100, 50):
        tally.outcomes[Outcome.IMPORTED] += count
        progress.update(tally)
    progress.end()
    lines = screen.getvalue().split("\r")
    assert lines[1].startswith(f"[{'#' * 12}{'.' * 18}] 100/250  imported 100, updated 0")
    assert lines[-1] == f"[{'#' * 30}] 250/250  {tally.summary()}\n"


def test_elsewhere_a_line_every_thousand_users() -> None:
    log = io.StringIO()
    progress = Progress(log)
    progress.total = 2500
    tally = Tally()
    for _ in range(25):
        tally.outcomes[Outcome.UNCHANGED] += 100
        progress.update(tally)
    assert log.getvalue().splitlines() == [
        "1000/2500 user(s) read: imported 0, updated 0, unchanged 1000, skipped (deleted) 0",
        "2000/2500 user(s) read: imported 0, updated 0, unchanged 2000, skipped (deleted) 0",
    ]
