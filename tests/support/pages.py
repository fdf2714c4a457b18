"""The operator pages as a person reads them: a realistic flow to fill them (sign-ups, actions,
an email Resend refused), emails written to the outbox as the worker writes them, and readers of
the HTML: one loop's card and its rows, the visible words, and a doubled label among them."""

import itertools
import json
import re
from html.parser import HTMLParser

import httpx
from fastapi import FastAPI

from app.engine.email_jobs import EmailJob, JobStatus, RenderedEmail
from app.engine.job_ids import email_id
from app.storage.records import outbox_entry
from app.storage.store import Store
from tests.conftest import AUTH, FakeClock, load_fixture, sign, worker_of
from tests.support.constants import MIN

ACTIVE, LATE, BUILDER = "user_active", "user_late", "user_builder"


async def signup(client: httpx.AsyncClient, user_id: str, first_name: str) -> None:
    event = load_fixture("clerk_user_created.json")
    event["data"].update(id=user_id, first_name=first_name, last_name="Tester")
    event["data"]["email_addresses"][0]["email_address"] = f"{first_name.lower()}@example.org"
    body = json.dumps(event).encode()
    response = await client.post("/webhooks/clerk", content=body, headers=sign(body))
    assert response.status_code == 200, response.text


async def act(client: httpx.AsyncClient, user_id: str, action: str, times: int = 1) -> None:
    actions = [{"user_id": user_id, "action": action} for _ in range(times)]
    response = await client.post("/v1/actions", json={"actions": actions}, headers=AUTH)
    assert response.status_code == 202, response.text


async def dead_letter(store: Store, now_ms: int) -> None:
    """An email Resend refused for good (the outbox mode never fails on its own)."""
    job = EmailJob(
        id="email|user_bounced|activation|0|action", user_id="user_bounced",
        loop_id="activation", step=0, kind="action", template="activation_welcome",
        queued_at=now_ms, due_at=now_ms,
    )  # fmt: skip
    await store.queue.apply_decisions(job.user_id, rev="0", states={}, jobs=[job],
                                      wake_at_ms=None)  # fmt: skip
    failed = job.model_copy(update={"status": JobStatus.FAILED, "attempts": 4,
                                    "last_error": "Resend 422: invalid `to` address"})  # fmt: skip
    await store.queue.settle(failed, now_ms=now_ms, seq=0)


async def realistic_flow(client: httpx.AsyncClient, app: FastAPI, clock: FakeClock) -> None:
    """Three sign-ups: one activates in a minute, one times out and activates later, one
    builds ten projects; plus one email Resend refused."""
    for user_id, name in ((ACTIVE, "Ada"), (LATE, "Grace"), (BUILDER, "Linus")):
        await signup(client, user_id, name)
    await worker_of(app).drain()
    clock.advance(MIN)
    await act(client, ACTIVE, "first_project_created")
    await act(client, BUILDER, "project_created", times=10)
    await worker_of(app).drain()
    clock.advance(5 * MIN)
    await worker_of(app).drain()
    await act(client, LATE, "first_project_created")
    await worker_of(app).drain()
    await dead_letter(app.state.runtime.store, clock.now_ms)


async def sent_to_outbox(store: Store, user_id: str, loop_id: str, at_ms: int) -> None:
    """One email of `loop_id` to `user_id` written to the outbox as the worker writes it: queued,
    then settled as sent with its entry (`records.outbox_entry`)."""
    job = EmailJob(
        id=email_id(user_id, loop_id, 0, "action"), user_id=user_id, loop_id=loop_id, step=0,
        kind="action", template="welcome", queued_at=at_ms, due_at=at_ms,
    )  # fmt: skip
    await store.queue.apply_decisions(user_id, rev="0", states={}, jobs=[job], wake_at_ms=None)
    rendered = RenderedEmail(
        to=f"{user_id}@example.org", subject=f"{loop_id} for {user_id}",
        sender="Acme <hello@acme.dev>", html="<p>hi</p>", text="hi",
    )  # fmt: skip
    sent = job.model_copy(update={"status": JobStatus.SENT, "sent_at": at_ms,
                                  "rendered": rendered})  # fmt: skip
    await store.queue.settle(sent, now_ms=at_ms, seq=0, outbox_entry=outbox_entry(sent))


def card(page: str, loop_id: str) -> str:
    """One loop's card on the dashboard."""
    return page.split(f'id="loop-{loop_id}"', 1)[1].split('class="card loop ', 1)[0]


def funnel(page: str, loop_id: str) -> dict[str, int]:
    """The rows a person reads in one loop's card: counter name to number."""
    rows = re.findall(r'data-counter="([\w:]+)">.*?<td class="n">(\d+)</td>', card(page, loop_id),
                      re.DOTALL)  # fmt: skip
    return {name: int(value) for name, value in rows}


class Words(HTMLParser):
    """The words a person sees: the text outside `<head>`, scripts and styles."""

    HIDDEN = frozenset({"head", "title", "style", "script"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hidden = 0
        self.words: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in self.HIDDEN

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.HIDDEN

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.words += data.split()


def doubled_labels(html: str) -> list[str]:
    """A word said twice in a row on the page (`doubled_words`)."""
    return doubled_words(Words(html).words)


NOT_A_NUMBER = "n/a"  # a value, like the numbers beside it


def doubled_words(words: list[str]) -> list[str]:
    """A word said twice in a row, as the eye reads it (case aside: CSS may upper-case it):
    "ACTIVATION ACTIVATION". Values repeat in tables and charts ("0 0", "n/a n/a") and are
    left out."""
    return [
        f"{first} {second}"
        for first, second in itertools.pairwise(words)
        if first.casefold() == second.casefold() and is_word(first)
    ]


def is_word(token: str) -> bool:
    return token != NOT_A_NUMBER and any(c.isalpha() for c in token)


def page_title(html: str) -> str:
    found = re.search(r"<title>(.*?)</title>", html, re.DOTALL)
    assert found is not None, "a page without a title"
    return found.group(1)
