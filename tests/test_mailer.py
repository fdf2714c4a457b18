"""`app.delivery.resend_api`: the real `resend` SDK, through `ResendMailer`, against the Resend
stand-in served on a real port; and `RateLimiter` on a fake clock."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import resend

from app.delivery.pacing import RateLimiter
from app.delivery.resend_api import ResendMailer
from app.engine.email_jobs import RenderedEmail
from app.errors import ConfigError, KeyReused, PermanentSendError, TransientSendError
from tests.conftest import free_port
from tests.standins.resend import ResendStandin, run_standin
from tests.support.timing import eventually

EMAIL = RenderedEmail(
    sender="Acme <hello@acme.dev>",
    to="ann@example.com",
    subject="Welcome aboard, Ann!",
    html='<p>Hi Ann, <a href="https://app.acme.dev/p/1">keep going</a></p>',
    text="Hi Ann, keep going: https://app.acme.dev/p/1",
    headers={
        "List-Unsubscribe": "<https://loops.acme.dev/unsubscribe?token=abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    },
)
TAGS = {"loop": "activation", "step": "welcome-1"}


@pytest.fixture(scope="module")
def served() -> Iterator[ResendStandin]:
    with run_standin() as standin:
        yield standin


@pytest.fixture
def standin(served: ResendStandin) -> Iterator[ResendStandin]:
    served.reset()
    yield served
    served.reset()


@pytest.fixture
async def mailer(standin: ResendStandin) -> AsyncIterator[ResendMailer]:
    async with ResendMailer(
        standin.api_key, standin.url, timeout_s=2.0, rate_limiter=RateLimiter(0)
    ) as sender:
        yield sender


def key() -> str:
    return f"job-{time.monotonic_ns()}"


# --- delivery and idempotency ---------------------------------------------------------------


async def test_send_arrives_in_the_inbox_exactly(mailer: ResendMailer, standin: ResendStandin):
    email_id = await mailer.send(EMAIL, "welcome/user_1", tags=TAGS)

    [entry] = standin.inbox
    assert entry["id"] == email_id
    assert entry["idempotency_key"] == "welcome/user_1"
    assert entry["body"] == {
        "from": "Acme <hello@acme.dev>",
        "to": ["ann@example.com"],
        "subject": "Welcome aboard, Ann!",
        "html": EMAIL.html,
        "text": EMAIL.text,
        "headers": EMAIL.headers,
        "tags": [{"name": "loop", "value": "activation"}, {"name": "step", "value": "welcome-1"}],
    }


async def test_same_key_twice_is_one_email_with_one_id(
    mailer: ResendMailer, standin: ResendStandin
):
    job = key()
    first = await mailer.send(EMAIL, job)
    second = await mailer.send(EMAIL, job)

    assert first == second
    assert len(standin.inbox) == 1
    assert standin.requests == 2


async def test_same_key_with_another_payload_is_refused_for_good_not_read_as_sent(
    mailer: ResendMailer, standin: ResendStandin
):
    job = key()
    await mailer.send(EMAIL, job)

    with pytest.raises(KeyReused) as caught:
        await mailer.send(EMAIL.model_copy(update={"subject": "Another subject"}), job)

    assert caught.value.idempotency_key == job
    assert len(standin.inbox) == 1


async def test_a_request_still_in_flight_with_the_key_is_transient(
    mailer: ResendMailer, standin: ResendStandin
):
    job = key()
    standin.script(("hang", 1.0))
    first = asyncio.create_task(mailer.send(EMAIL, job))
    await eventually(lambda: job in standin.app.state.in_flight)

    with pytest.raises(TransientSendError) as caught:
        await mailer.send(EMAIL, job)

    assert caught.value.status == 409
    assert await first == standin.inbox[0]["id"]
    assert len(standin.inbox) == 1


# --- error translation ----------------------------------------------------------------------


async def test_scripted_500s_are_transient_then_the_send_goes_through(
    mailer: ResendMailer, standin: ResendStandin
):
    job = key()
    standin.script(("status", 500), ("status", 500))

    for _ in range(2):
        with pytest.raises(TransientSendError) as caught:
            await mailer.send(EMAIL, job)
        assert caught.value.status == 500
    email_id = await mailer.send(EMAIL, job)

    assert [entry["id"] for entry in standin.inbox] == [email_id]


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_proxy_error_page_is_transient(
    mailer: ResendMailer, standin: ResendStandin, status: int
):
    standin.script(("status", status))

    with pytest.raises(TransientSendError) as caught:
        await mailer.send(EMAIL, key())

    assert caught.value.status == status


async def test_429_is_transient_with_retry_after(mailer: ResendMailer, standin: ResendStandin):
    standin.script(("status", 429, 7))

    with pytest.raises(TransientSendError) as caught:
        await mailer.send(EMAIL, key())

    assert caught.value.status == 429
    assert caught.value.retry_after_s == 7.0


async def test_429_without_retry_after_has_none(mailer: ResendMailer, standin: ResendStandin):
    standin.script(("status", 429))

    with pytest.raises(TransientSendError) as caught:
        await mailer.send(EMAIL, key())

    assert caught.value.retry_after_s is None


async def test_429_holds_every_later_send_back(standin: ResendStandin):
    fake = FakeTime()
    limiter = RateLimiter(0, clock=fake, sleep=fake.sleep)
    standin.script(("status", 429, 7))
    async with ResendMailer(standin.api_key, standin.url, 2.0, rate_limiter=limiter) as sender:
        with pytest.raises(TransientSendError):
            await sender.send(EMAIL, key())
        await sender.send(EMAIL, key())

    assert fake.sleeps == [7.0]


async def test_422_is_permanent(mailer: ResendMailer, standin: ResendStandin):
    standin.script(("status", 422))

    with pytest.raises(PermanentSendError) as caught:
        await mailer.send(EMAIL, key())

    assert caught.value.status == 422


async def test_concurrent_request_409_is_transient(mailer: ResendMailer, standin: ResendStandin):
    standin.script(("status", 409))

    with pytest.raises(TransientSendError):
        await mailer.send(EMAIL, key())


async def test_a_wrong_api_key_is_permanent(standin: ResendStandin):
    async with ResendMailer("re_wrong", standin.url, 2.0, rate_limiter=RateLimiter(0)) as sender:
        with pytest.raises(PermanentSendError) as caught:
            await sender.send(EMAIL, key())

    assert caught.value.status == 403
    assert standin.inbox == []


async def test_a_401_is_permanent(mailer: ResendMailer, standin: ResendStandin):
    standin.script(("status", 401))

    with pytest.raises(PermanentSendError) as caught:
        await mailer.send(EMAIL, key())

    assert caught.value.status == 401


@pytest.mark.parametrize("api_key", ["", " re_key", "re_key\n"])
def test_a_blank_or_padded_api_key_is_a_config_error(api_key: str):
    with pytest.raises(ConfigError, match="RESEND_API_KEY"):
        ResendMailer(api_key, "https://api.resend.com", 2.0)


@pytest.mark.parametrize("bad_key", ["", "k" * 257, "job\n1", "jöb-1"])
async def test_an_idempotency_key_resend_would_refuse_is_permanent_and_never_sent(
    mailer: ResendMailer, standin: ResendStandin, bad_key: str
):
    with pytest.raises(PermanentSendError):
        await mailer.send(EMAIL, bad_key)

    assert standin.requests == 0


async def test_addresses_in_resend_messages_are_redacted(
    mailer: ResendMailer, standin: ResendStandin
):
    # Resend's 403 for a test key quotes the account's address.
    message = "You can only send testing emails to your own email address (youremail@domain.com)."
    standin.script(("status", 403, None, "validation_error", message))

    with pytest.raises(PermanentSendError) as caught:
        await mailer.send(EMAIL, key())

    assert "***@domain.com" in str(caught.value)
    assert "youremail@" not in str(caught.value)


async def test_a_hang_longer_than_the_timeout_is_transient_within_the_timeout(
    standin: ResendStandin,
):
    standin.script(("hang", 10))
    async with ResendMailer(standin.api_key, standin.url, 0.3, rate_limiter=RateLimiter(0)) as m:
        started_s = time.monotonic()
        with pytest.raises(TransientSendError):
            await m.send(EMAIL, key())
        elapsed_s = time.monotonic() - started_s

    assert 0.25 < elapsed_s < 1.5
    assert standin.inbox == []


async def test_connection_refused_is_transient():
    url = f"http://127.0.0.1:{free_port()}"
    async with ResendMailer("re_key", url, 1.0, rate_limiter=RateLimiter(0)) as sender:
        with pytest.raises(TransientSendError, match="ConnectError"):
            await sender.send(EMAIL, key())


@pytest.mark.parametrize("failure", [500, "drop"])
async def test_accepted_but_unanswered_is_transient_and_the_retry_gets_the_same_id(
    mailer: ResendMailer, standin: ResendStandin, failure: int | str
):
    job = key()
    standin.script(("accept_then_fail", failure))

    with pytest.raises(TransientSendError):
        await mailer.send(EMAIL, job)
    email_id = await mailer.send(EMAIL, job)

    assert [entry["id"] for entry in standin.inbox] == [email_id]


# --- the payload is checked against Resend's schema -----------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"subject": None},
        {"sender": "Acme hello-at-acme.dev"},
        {"to": "not an address"},
        {"tags": {"loop": "activation.v2"}},
    ],
)
async def test_a_payload_resend_would_refuse_is_a_permanent_422(
    mailer: ResendMailer, standin: ResendStandin, change: dict[str, Any]
):
    tags = change.pop("tags", TAGS)
    email = EMAIL.model_copy(update=change)
    with pytest.raises(PermanentSendError) as caught:
        await mailer.send(email, key(), tags=tags)

    assert caught.value.status == 422
    assert standin.inbox == []


# --- one connection pool, the SDK's globals contained ---------------------------------------


async def test_many_sends_share_one_pooled_connection(mailer: ResendMailer, standin: ResendStandin):
    for _ in range(5):
        await mailer.send(EMAIL, key())

    assert standin.requests == 5
    assert standin.connections == 1
    assert resend.default_async_http_client is mailer.http_client


async def test_two_mailers_send_concurrently_each_with_its_own_key(
    mailer: ResendMailer, standin: ResendStandin
):
    async with ResendMailer("re_other", standin.url, 2.0, rate_limiter=RateLimiter(0)) as other:
        sends = [sender.send(EMAIL, key()) for _ in range(5) for sender in (mailer, other)]
        results = await asyncio.gather(*sends, return_exceptions=True)

    assert all(isinstance(result, str) for result in results[0::2])
    assert all(isinstance(result, PermanentSendError) for result in results[1::2])
    assert len(standin.inbox) == 5


async def test_close_closes_the_pool_and_gives_the_sdk_its_default_back(standin: ResendStandin):
    sdk_default = resend.default_async_http_client
    sender = ResendMailer(standin.api_key, standin.url, 2.0, rate_limiter=RateLimiter(0))
    await sender.send(EMAIL, key())
    await sender.close()

    assert sender.http_client.http.is_closed
    assert resend.default_async_http_client is sdk_default
    assert resend.api_key is None


def test_an_api_url_without_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="RESEND_API_URL"):
        ResendMailer("re_key", "api.resend.com", 2.0)


async def test_the_mailer_spaces_its_requests(standin: ResendStandin):
    async with ResendMailer(standin.api_key, standin.url, 2.0, rate_limiter=RateLimiter(10)) as m:
        started_s = time.monotonic()
        for _ in range(3):
            await m.send(EMAIL, key())
        elapsed_s = time.monotonic() - started_s

    assert elapsed_s >= 0.2


# --- RateLimiter ----------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock in seconds that only `sleep` moves; sleeps are recorded."""

    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now_s += delay_s


def limiter(rate_per_s: float) -> tuple[RateLimiter, FakeTime]:
    fake = FakeTime()
    return RateLimiter(rate_per_s, clock=fake, sleep=fake.sleep), fake


async def test_the_limiter_spaces_calls_by_the_rate():
    rate, fake = limiter(2.0)

    for _ in range(3):
        await rate.acquire()

    assert fake.sleeps == [0.5, 0.5]


def test_concurrent_callers_each_get_their_own_slot():
    rate, _ = limiter(4.0)

    assert [rate.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


async def test_the_limiter_does_not_wait_after_a_quiet_spell():
    rate, fake = limiter(2.0)
    await rate.acquire()
    fake.now_s += 10

    await rate.acquire()

    assert fake.sleeps == []


async def test_a_rate_of_zero_turns_spacing_off():
    rate, fake = limiter(0)

    for _ in range(5):
        await rate.acquire()

    assert fake.sleeps == []


async def test_hold_off_delays_the_next_call_even_with_spacing_off():
    rate, fake = limiter(0)
    rate.hold_off(3.0)

    await rate.acquire()
    await rate.acquire()

    assert fake.sleeps == [3.0]


async def test_a_hold_off_also_moves_the_callers_already_waiting_for_a_slot():
    """The worker's lanes reserve slots before a sibling's 429: none may start inside its hold."""
    fake = FakeTime()
    gate = asyncio.Event()

    async def sleep(delay_s: float) -> None:
        wake_at = fake.now_s + delay_s
        await gate.wait()
        fake.now_s = max(fake.now_s, wake_at)

    rate = RateLimiter(1.0, clock=fake, sleep=sleep)
    started: list[float] = []

    async def send() -> None:
        await rate.acquire()
        started.append(fake.now_s)

    first = fake.now_s
    await send()  # its slot is now; the next two wait for theirs, 1 s and 2 s later
    waiting = [asyncio.create_task(send()) for _ in range(2)]
    await asyncio.sleep(0)
    rate.hold_off(7.0)  # the first send got a 429 with retry-after: 7
    gate.set()
    await asyncio.gather(*waiting)

    assert started[0] == first
    assert all(at >= first + 7.0 for at in started[1:]), started


def test_hold_off_never_brings_the_next_slot_forward():
    rate, _ = limiter(1.0)
    rate.hold_off(5.0)
    rate.hold_off(1.0)

    assert rate.reserve() == 5.0


# --- following Resend's ratelimit-* headers --------------------------------------------------


def test_the_limiter_takes_resends_limit_and_waits_out_an_empty_window():
    rate, _ = limiter(50.0)  # a wrong guess
    rate.observe({"ratelimit-limit": "10", "ratelimit-remaining": "9", "ratelimit-reset": "0.4"})
    assert [rate.reserve() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])

    rate, _ = limiter(5.0)
    rate.observe({"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "0.75"})
    assert rate.reserve() == 0.75  # nothing left in this window: the next send waits it out

    off, _ = limiter(0)  # spacing off: Resend's limit is not adopted, an empty window still is
    off.observe({"ratelimit-limit": "5", "ratelimit-remaining": "0", "ratelimit-reset": "0.5"})
    assert [off.reserve(), off.reserve()] == [0.5, 0.5]


def test_unreadable_ratelimit_headers_change_nothing():
    rate, _ = limiter(4.0)
    rate.observe({"ratelimit-limit": "soon", "ratelimit-remaining": "-1", "ratelimit-reset": "x"})
    rate.observe({"ratelimit-limit": "0"})
    assert [rate.reserve() for _ in range(2)] == [0.0, 0.25]


async def test_a_wrong_rate_guess_is_corrected_by_resends_headers(standin: ResendStandin):
    """RESEND_RATE_LIMIT_PER_S at 50 against a team limited to 5 a second: after Resend's first
    answer the mailer spaces its sends by Resend's limit, and none is refused."""
    standin.limit(5)
    async with ResendMailer(
        standin.api_key, standin.url, 2.0, rate_limiter=RateLimiter(50.0)
    ) as sender:
        for _ in range(8):
            await sender.send(EMAIL, key())
    assert (len(standin.inbox), standin.limited) == (8, 0)
    assert sender.rate_limiter.interval_s == pytest.approx(0.2)
