"""The webhook receiver stand-in: it records what it was sent, verifies Standard Webhooks
signatures as svix does, answers the statuses scripted in turn, and hangs when told to."""

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from svix.webhooks import Webhook

from tests.standins.webhook_receiver import WebhookReceiver, run_receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with run_receiver() as running:
        yield running


def signed(secret: str, body: str, msg_id: str = "msg_1") -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }


def test_it_records_and_verifies_what_it_was_sent(receiver: WebhookReceiver) -> None:
    receiver.reset()
    body = '{"a": 1}'
    good = httpx.post(f"{receiver.url}/in", content=body, headers=signed(receiver.secret, body))
    other = "whsec_" + "b3RoZXIta2V5LW9mLWEtc2VuZGVy"
    bad = httpx.post(f"{receiver.url}/in", content=body, headers=signed(other, body))
    plain = httpx.post(f"{receiver.url}/in", content=body)
    assert [good.status_code, bad.status_code, plain.status_code] == [200, 200, 200]
    assert [r.verified for r in receiver.requests] == [True, False, None]
    assert receiver.requests[0].json() == {"a": 1}
    assert (receiver.requests[0].path, receiver.ids()[0]) == ("/in", "msg_1")


def test_it_answers_the_scripted_statuses_in_turn_then_200(receiver: WebhookReceiver) -> None:
    receiver.reset()
    receiver.answer(503, 410)
    statuses = [httpx.post(receiver.url, content="{}").status_code for _ in range(3)]
    assert statuses == [503, 410, 200]


def test_a_hang_gives_no_answer(receiver: WebhookReceiver) -> None:
    receiver.reset()
    receiver.hang()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(receiver.url, content="{}", timeout=0.3)
    receiver.reset()  # lets it go
    assert httpx.post(receiver.url, content="{}").status_code == 200
