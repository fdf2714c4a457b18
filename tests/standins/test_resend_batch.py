"""The Resend stand-in's `POST /emails/batch` (tests/standins/resend.py): sent with the real
`resend` SDK (`resend.Batch.send_async`), and with httpx for what the SDK would never send."""

import asyncio
import time
from typing import Any, cast

import httpx
import pytest
import resend as resend_sdk
from resend.exceptions import ResendError
from resend.http_client_httpx import HTTPXClient

from tests.standins.resend import Chaos, ResendStandin
from tests.support.timing import eventually

SENDER = "Acme <hello@acme.dev>"
ATTACHMENT = {"filename": "hello.txt", "content": "aGVsbG8="}


def email(n: int, **change: Any) -> dict[str, Any]:
    """A valid email for the n-th recipient, `change` merged in."""
    body = {"from": SENDER, "to": [f"user{n}@example.com"], "subject": f"Hi {n}", "text": "Hi"}
    return {**body, **change}


def emails(count: int) -> list[dict[str, Any]]:
    return [email(n) for n in range(count)]


def without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != name}


@pytest.fixture
def standin(resend: ResendStandin, monkeypatch: pytest.MonkeyPatch) -> ResendStandin:
    """The session's stand-in, emptied, with the SDK's globals pointing at it for this test."""
    monkeypatch.setattr(resend_sdk, "api_key", resend.api_key)
    monkeypatch.setattr(resend_sdk, "api_url", resend.url)
    monkeypatch.setattr(resend_sdk, "default_async_http_client", HTTPXClient(timeout=5))
    return resend


async def send(batch: list[Any], key: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """The batch through the SDK; Resend's answer without the headers the SDK adds to it."""
    options: dict[str, str] = {}
    if key is not None:
        options["idempotency_key"] = key
    if mode is not None:
        options["batch_validation"] = mode
    params = cast(list[resend_sdk.Emails.SendParams], batch)
    sent = await resend_sdk.Batch.send_async(params, cast(resend_sdk.Batch.SendOptions, options))
    return {name: value for name, value in sent.items() if name != "http_headers"}


async def refused(batch: list[Any], key: str | None = None, mode: str | None = None) -> ResendError:
    """The error the SDK raises for the batch's answer."""
    with pytest.raises(ResendError) as caught:
        await send(batch, key, mode)
    return caught.value


async def post(
    standin: ResendStandin,
    path: str = "/emails/batch",
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    """A raw POST (`json=` or `content=`), authorized unless `headers` say otherwise."""
    sent = {"Authorization": f"Bearer {standin.api_key}", **(headers or {})}
    async with httpx.AsyncClient(base_url=standin.url, timeout=5.0) as http:
        return await http.post(path, headers=sent, **body)


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["id"] for item in answer["data"]]


# --- validation -----------------------------------------------------------------------------


async def test_a_strict_batch_is_accepted_whole(standin: ResendStandin) -> None:
    batch = emails(3)

    answer = await send(batch, key="batch-1")

    assert answer.keys() == {"data"}  # strict: no `errors`
    assert ids(answer) == [entry["id"] for entry in standin.inbox]
    assert [entry["body"] for entry in standin.inbox] == batch
    for entry in standin.inbox:
        assert (entry["idempotency_key"], entry["batch"]) == ("batch-1", True)
        assert isinstance(entry["received_at_ms"], int)
    assert standin.batches == [{"key": "batch-1", "size": 3, "accepted": 3, "validation": "strict"}]
    standin.reset()
    assert standin.batches == []


@pytest.mark.parametrize("mode", [None, "strict"])
@pytest.mark.parametrize(
    ("bad", "name", "field"),
    [
        (email(2, to="not an address"), "validation_error", "[2].to"),
        (without(email(2), "subject"), "missing_required_field", "[2].subject"),
        (email(2, tags=[{"name": "loop.v2"}]), "validation_error", "[2].tags[0].name"),
        (email(2, cc=5), "validation_error", "[2].cc"),
    ],
)
async def test_one_bad_email_refuses_a_strict_batch_whole(
    standin: ResendStandin, mode: str | None, bad: Any, name: str, field: str
) -> None:
    error = await refused([*emails(2), bad, email(3)], key="k", mode=mode)

    assert (error.code, error.error_type) == (422, name)
    assert f"`{field}`" in error.message
    assert (standin.inbox, standin.batches) == ([], [])


async def test_a_refused_batch_leaves_its_key_free(standin: ResendStandin) -> None:
    await refused([email(0, to="nobody")], key="k")

    answer = await send([email(0)], key="k")

    assert ids(answer) == [standin.inbox[0]["id"]]


async def test_a_permissive_batch_accepts_the_valid_emails_and_reports_the_rest(
    standin: ResendStandin,
) -> None:
    batch = [email(0), email(1, to="bob at example.com"), email(2), without(email(3), "to")]

    answer = await send(batch, key="mixed", mode="permissive")

    assert ids(answer) == [entry["id"] for entry in standin.inbox]
    assert [entry["body"] for entry in standin.inbox] == [batch[0], batch[2]]
    [wrong_address, missing_to] = answer["errors"]
    assert (wrong_address["index"], missing_to["index"]) == (1, 3)
    assert "`[1].to`" in wrong_address["message"]
    assert "`[3].to`" in missing_to["message"]
    assert standin.batches == [
        {"key": "mixed", "size": 4, "accepted": 2, "validation": "permissive"}
    ]


async def test_a_permissive_batch_with_nothing_wrong_has_no_errors(standin: ResendStandin) -> None:
    answer = await send(emails(2), mode="permissive")

    assert answer == {"data": [{"id": entry["id"]} for entry in standin.inbox], "errors": []}


@pytest.mark.parametrize("count", [0, 101])
async def test_a_batch_must_hold_1_to_100_emails(standin: ResendStandin, count: int) -> None:
    error = await refused(emails(count), mode="permissive")

    assert (error.code, error.error_type) == (422, "validation_error")
    assert standin.inbox == []


async def test_a_batch_of_100_is_accepted(standin: ResendStandin) -> None:
    answer = await send(emails(100))

    assert len(ids(answer)) == len(standin.inbox) == 100
    assert standin.batches[0]["size"] == 100


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"json": email(0)}, 422, "body"),  # an object, not an array
        ({"json": [email(0), "an email"]}, 422, "[1]"),  # the SDK cannot send this one
        ({"content": b"[{not json"}, 400, None),
    ],
)
async def test_a_body_that_is_not_an_array_of_objects_is_refused(
    standin: ResendStandin, body: dict[str, Any], status: int, field: str | None
) -> None:
    response = await post(standin, **body)

    assert response.status_code == status
    assert response.json()["name"] == "validation_error"
    if field is not None:
        assert f"`{field}`" in response.json()["message"]
    assert standin.inbox == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("attachments", [ATTACHMENT]), ("scheduled_at", "2030-01-01T09:00:00Z")],
)
async def test_attachments_and_scheduled_at_are_refused_in_a_batch_only(
    standin: ResendStandin, field: str, value: Any
) -> None:
    error = await refused([email(0), email(1, **{field: value})])
    reported = await send([email(0), email(1, **{field: value})], mode="permissive")
    alone = await post(standin, "/emails", json=email(1, **{field: value}))

    assert (error.code, error.error_type) == (422, "validation_error")
    assert f"`[1].{field}`" in error.message
    assert [item["index"] for item in reported["errors"]] == [1]
    assert f"`[1].{field}`" in reported["errors"][0]["message"]
    assert alone.status_code == 200
    assert [entry.get("batch", False) for entry in standin.inbox] == [True, False]


@pytest.mark.parametrize(
    ("headers", "status", "name"),
    [
        ({"x-batch-validation": "lenient"}, 422, "validation_error"),
        ({"Authorization": ""}, 401, "missing_api_key"),
        ({"Authorization": "Bearer re_wrong"}, 403, "invalid_api_key"),
        ({"Idempotency-Key": "k" * 257}, 400, "invalid_idempotency_key"),
        ({"Idempotency-Key": ""}, 400, "invalid_idempotency_key"),
    ],
)
async def test_headers_resend_would_refuse(
    standin: ResendStandin, headers: dict[str, str], status: int, name: str
) -> None:
    response = await post(standin, headers=headers, json=emails(2))

    assert response.status_code == status
    assert response.json()["name"] == name
    assert standin.inbox == []


# --- idempotency ----------------------------------------------------------------------------


async def test_a_replay_gets_the_first_answer_and_sends_nothing_new(
    standin: ResendStandin,
) -> None:
    batch = [email(0), email(1, to="nobody"), email(2)]
    first = await send(batch, key="replayed", mode="permissive")
    inbox = list(standin.inbox)

    again = await send(batch, key="replayed", mode="permissive")

    assert again == first
    assert (len(first["data"]), len(first["errors"])) == (2, 1)
    assert standin.inbox == inbox
    assert len(standin.batches) == 1


@pytest.mark.parametrize(
    ("batch", "mode"),
    [
        ([email(0), email(9)], "strict"),  # other emails
        ([email(1), email(0)], "strict"),  # the same, in another order
        ([email(0), email(1)], "permissive"),  # the same, in another mode
    ],
)
async def test_the_same_key_with_another_payload_is_409(
    standin: ResendStandin, batch: list[dict[str, Any]], mode: str
) -> None:
    await send(emails(2), key="once", mode="strict")

    error = await refused(batch, key="once", mode=mode)

    assert (error.code, error.error_type) == (409, "invalid_idempotent_request")
    assert len(standin.inbox) == 2


async def test_batch_keys_are_apart_from_emails_keys(standin: ResendStandin) -> None:
    single = await post(standin, "/emails", headers={"Idempotency-Key": "shared"}, json=email(0))

    answer = await send(emails(2), key="shared")

    assert single.status_code == 200
    assert ids(answer) == [entry["id"] for entry in standin.inbox[1:]]


# --- faults and the rate limit --------------------------------------------------------------


async def test_the_fault_script_is_shared_with_emails(standin: ResendStandin) -> None:
    standin.script(("status", 500), ("status", 503))

    error = await refused(emails(2), key="k")
    proxy = await post(standin, "/emails", json=email(0))
    answer = await send(emails(2), key="k")

    assert (error.code, error.error_type) == (500, "application_error")
    assert proxy.status_code == 503
    assert ids(answer) == [entry["id"] for entry in standin.inbox]


async def test_accepted_then_failed_the_retry_gets_the_stored_answer(
    standin: ResendStandin,
) -> None:
    standin.script(("accept_then_fail", 500))
    error = await refused(emails(3), key="lost")
    inbox = list(standin.inbox)

    answer = await send(emails(3), key="lost")

    assert error.code == 500
    assert ids(answer) == [entry["id"] for entry in inbox]
    assert standin.inbox == inbox
    assert len(standin.batches) == 1


async def test_a_batch_counts_once_against_the_rate_limit(standin: ResendStandin) -> None:
    standin.limit(2)
    await asyncio.sleep(1 - time.monotonic() % 1)  # the stand-in's 1 s windows start on the second

    first = await resend_sdk.Batch.send_async(cast(list[resend_sdk.Emails.SendParams], emails(50)))
    await send(emails(50))
    error = await refused(emails(1))

    assert first["http_headers"]["ratelimit-limit"] == "2"
    assert first["http_headers"]["ratelimit-remaining"] == "1"  # 50 emails, one request
    assert (error.code, error.error_type) == (429, "rate_limit_exceeded")
    assert float(error.headers["retry-after"]) > 0
    assert (standin.limited, len(standin.inbox)) == (1, 100)


async def test_a_hanging_batch_holds_its_key_in_flight(standin: ResendStandin) -> None:
    standin.script(("hang", 1.0))
    hanging = asyncio.create_task(send(emails(2), key="slow"))
    await eventually(lambda: "slow" in standin.app.state.batch_in_flight)

    error = await refused(emails(2), key="slow")
    single = await post(standin, "/emails", headers={"Idempotency-Key": "slow"}, json=email(9))
    answer = await hanging

    assert (error.code, error.error_type) == (409, "concurrent_idempotent_requests")
    assert single.status_code == 200  # an /emails key of the same name is another key
    assert ids(answer) == [entry["id"] for entry in standin.inbox if entry.get("batch")]
    assert len(standin.batches) == 1


async def test_chaos_draws_faults_for_requests_the_script_leaves_alone(
    standin: ResendStandin,
) -> None:
    standin.script(("status", 429, 1.0))
    standin.chaos(Chaos(error_rate=1.0))
    limited = await refused(emails(1))
    failed = await refused(emails(1))
    standin.chaos(
        Chaos(accept_then_fail_rate=0.5, latency_rate=0.5, latency_s=(0.01, 0.02), seed=7)
    )
    drawn = [await post(standin, json=emails(1)) for _ in range(20)]
    standin.chaos(None)
    before_s = time.time()
    await send(emails(2))

    assert (limited.code, failed.code) == (429, 500)
    assert {response.status_code for response in drawn} == {200, 500}  # latency, accept then 500
    faults = standin.faults
    assert (faults["429"], faults["500"]) == (1, 1)
    assert faults["accept_then_fail 500"] + faults["hang"] == 20
    assert len(standin.inbox) == 22  # every drawn request was accepted, then the last two
    for entry in standin.inbox[-2:]:
        assert before_s * 1000 - 1 <= entry["arrived_at_ms"] <= entry["received_at_ms"]
