"""`GET /outbox` (`app.web.pages.outbox`) and the reads under it
(`app.storage.queries.Queries.outbox_page`), on all three transports: 50 emails a page, newest
first, with links to newer and older pages; filters by user id and loop that paging keeps; each
card names its user; and reads that stay bounded: one LRANGE for a page unfiltered, the capped
list read a slice at a time for a filter, no further than the page needs."""

import re

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.storage.keys import OUTBOX_LENGTH
from app.storage.queries import OUTBOX_SCAN
from app.storage.records import OutboxFilter
from tests.conftest import AUTH, FakeClock, store_of
from tests.support.constants import SEC
from tests.support.pages import sent_to_outbox
from tests.support.storage import Meter

USERS = ("user_ann", "user_bob", "user_cy")
LOOPS = ("welcome", "ten")
SENT = 60  # more than a page


async def fill(app: FastAPI, clock: FakeClock, count: int = SENT, start: int = 0) -> list[str]:
    """`count` emails, one a second, to the users and loops in turn (email `n` to user
    `<name><n>`, from `start` on); their subjects, newest first (as the outbox shows them)."""
    subjects = []
    for n in range(start, start + count):
        user, loop = USERS[n % len(USERS)], LOOPS[n % len(LOOPS)]
        await sent_to_outbox(store_of(app), f"{user}{n:03d}", loop, clock.now_ms + n * SEC)
        subjects.append(f"{loop} for {user}{n:03d}")
    return subjects[::-1]


def cards(page: str) -> list[str]:
    """The subjects of the page's email cards, top to bottom."""
    return re.findall(r'<article class="card email">\s*<header><h2>(.*?)</h2>', page)


def links(page: str) -> dict[str, str]:
    """The pager's links by `rel` (prev, next): the first pager's, above the cards."""
    pager = page.split('<nav class="pager"', 1)[1].split("</nav>", 1)[0]
    return {rel: href.replace("&amp;", "&") for href, rel in
            re.findall(r'<a href="([^"]*)" rel="(\w+)">', pager)}  # fmt: skip


async def outbox_page(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.text


# --- paging ---------------------------------------------------------------------------------------


async def test_fifty_a_page_newest_first_with_links_to_newer_and_older(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    subjects = await fill(app, clock)
    first = await outbox_page(client, "/outbox")
    second = await outbox_page(client, links(first)["next"])

    assert cards(first) == subjects[:50]
    assert links(first) == {"next": "/outbox?page=2"}
    assert "1\u201350 shown" in first
    assert cards(second) == subjects[50:]
    assert links(second) == {"prev": "/outbox"}
    assert "51\u201360 shown" in second
    assert second.count('<nav class="pager"') == 2  # above and below the cards


async def test_a_page_past_the_end_is_empty_and_a_wrong_page_is_refused(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fill(app, clock, count=3)
    past = await outbox_page(client, "/outbox?page=7")
    assert cards(past) == []
    assert "No emails this far back." in past
    assert links(past) == {"prev": "/outbox?page=6"}
    for wrong in ("0", "-1", "two", "1001"):
        response = await client.get("/outbox", params={"page": wrong}, headers=AUTH)
        assert response.status_code == 422, wrong


async def test_an_empty_outbox_says_so(client: httpx.AsyncClient) -> None:
    page = await outbox_page(client, "/outbox")
    assert cards(page) == []
    assert "The outbox is empty: no email has been due yet." in page
    assert links(page) == {}


# --- filters ------------------------------------------------------------------------------------


async def test_filters_by_user_and_by_loop_and_paging_keeps_them(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    subjects = await fill(app, clock)
    one_user = await outbox_page(client, "/outbox?user_id=user_bob001")
    welcome = await outbox_page(client, "/outbox?loop=welcome")
    both = await outbox_page(client, "/outbox?user_id=user_bob001&loop=ten")

    assert cards(one_user) == ["ten for user_bob001"]
    assert cards(welcome) == [s for s in subjects if s.startswith("welcome ")]  # 30: one page
    assert links(welcome) == {}
    assert cards(both) == ["ten for user_bob001"]
    assert cards(await outbox_page(client, "/outbox?user_id=user_bob001&loop=welcome")) == []

    await fill(app, clock, start=SENT)  # 60 more: 60 of the loop `ten`, two pages
    ten = await outbox_page(client, "/outbox?loop=ten")
    assert links(ten) == {"next": "/outbox?loop=ten&page=2"}
    older = await outbox_page(client, links(ten)["next"])
    assert links(older) == {"prev": "/outbox?loop=ten"}
    assert len(cards(ten)) == 50
    assert len(cards(older)) == 10
    assert all(subject.startswith("ten ") for subject in cards(ten) + cards(older))


async def test_the_form_shows_the_filters_in_force_and_escapes_them(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fill(app, clock, count=2)
    page = await outbox_page(client, "/outbox?user_id=user_ann000&loop=ten")
    assert '<input id="user_id" name="user_id" value="user_ann000"' in page
    assert '<option value="ten" selected>ten</option>' in page  # not loaded, yet asked for
    assert '<option value="activation">activation</option>' in page  # the loaded loops
    assert '<a href="/outbox">Clear filters</a>' in page
    assert "No email in the outbox matches user <code>user_ann000</code> and loop" in page

    hostile = '"><script>x</script>'
    page = await outbox_page(client, f"/outbox?user_id={hostile}")
    assert "<script>x" not in page
    assert 'value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"' in page


async def test_each_card_names_its_user_and_links_to_their_emails(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fill(app, clock, count=4)
    page = await outbox_page(client, "/outbox")
    named = re.findall(r'<dd class="user"><a href="([^"]+)"[^>]*><code>([^<]+)</code>', page)
    assert named == [
        (f"/outbox?user_id={user}", user)
        for user in ("user_ann003", "user_cy002", "user_bob001", "user_ann000")
    ]


# --- the reads under the page ---------------------------------------------------------------


async def test_pages_of_the_store_are_disjoint_and_cover_every_entry(
    app: FastAPI, clock: FakeClock
) -> None:
    subjects = await fill(app, clock)
    queries = store_of(app).queries
    seen = []
    for offset in range(0, SENT + 20, 20):
        page = await queries.outbox_page(offset, 20)
        seen += [entry["subject"] for entry in page.entries]
        assert page.more is (offset + 20 < SENT)
    assert seen == subjects
    ann = await queries.outbox_page(0, 50, OutboxFilter(user_id="user_ann003"))
    assert [entry["subject"] for entry in ann.entries] == ["ten for user_ann003"]
    assert not ann.more


@pytest.mark.parametrize("transport", ["redis"], indirect=True)
async def test_reads_stay_bounded(
    app: FastAPI, clock: FakeClock, redis_client: redis.Redis
) -> None:
    """Unfiltered: one LRANGE of the page. Filtered: the list a slice of OUTBOX_SCAN at a time,
    stopping once the page and one more are found, and never past the capped list."""
    await fill(app, clock, count=OUTBOX_SCAN + 10)
    queries, meter = store_of(app).queries, Meter(redis_client)

    page = await meter.of(lambda: queries.outbox_page(50, 50))
    near = await meter.of(lambda: queries.outbox_page(0, 5, OutboxFilter(loop_id="ten")))
    nobody = await meter.of(lambda: queries.outbox_page(0, 50, OutboxFilter(user_id="user_x")))
    assert page == {"lrange": 1}
    assert near == {"lrange": 1}  # found among the newest OUTBOX_SCAN
    assert nobody == {"lrange": 2}  # the whole list: OUTBOX_SCAN, then the 10 left
    assert OUTBOX_LENGTH // OUTBOX_SCAN == 4  # a full list: four reads at most
