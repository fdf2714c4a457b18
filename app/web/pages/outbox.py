"""`GET /outbox`: the emails the outbox mode kept instead of sending (no `RESEND_API_KEY`),
rendered, newest first, `OUTBOX_SHOWN` a page, filtered by user id and loop (`?user_id=`,
`?loop=`, `?page=`). Behind the operator's login, like the dashboard (`app.web.pages.dashboard`).

The outbox is a capped list (`storage.keys.OUTBOX_LENGTH` entries a shard): a page unfiltered is
one LRANGE; a filtered one reads the list from its newest until the page is found, at most the
whole list (`storage.queries.Queries.outbox_page`).
"""

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.engine.job_ids import JobId
from app.storage.records import OutboxFilter
from app.web import auth
from app.web.auth import Access
from app.web.deps import SettingsDep, StoreDep, services_of
from app.web.errors import error_responses
from app.web.pages.dashboard import refusal, when
from app.web.pages.layout import page

router = APIRouter(tags=["operator"])

OUTBOX_SHOWN = 50
MAX_PAGE = 1000  # far past the capped list's end on any cluster: later pages are empty anyway
PATH = "/outbox"

PageQuery = Annotated[
    int, Query(alias="page", ge=1, le=MAX_PAGE, description="1 holds the newest emails")
]
UserQuery = Annotated[str, Query(max_length=128, description="only this user's emails")]
LoopQuery = Annotated[str, Query(max_length=128, description="only this loop's emails")]
ERRORS = {
    401: {"description": "log in"},
    **error_responses({422: "a page out of 1 to MAX_PAGE, or a filter too long"}, page=True),
}


@router.get(PATH, response_class=HTMLResponse, responses=ERRORS)
@auth.policy(Access.OPERATOR, refuse=refusal)
async def outbox(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    page_number: PageQuery = 1,
    user_id: UserQuery = "",
    loop: LoopQuery = "",
) -> HTMLResponse:
    """The emails that would have been sent (no RESEND_API_KEY), rendered, newest first."""
    only = OutboxFilter(user_id.strip() or None, loop.strip() or None)
    offset = (page_number - 1) * OUTBOX_SHOWN
    found = await store.queries.outbox_page(offset, OUTBOX_SHOWN, only)
    return page(
        "outbox.html",
        title="Outbox",
        emails=[outbox_email(entry) for entry in found.entries],
        outbox_mode=settings.resend_api_key is None,
        only=only,
        loop_ids=loop_choices(request, only),
        first=offset + 1,
        per_page=OUTBOX_SHOWN,
        page_number=page_number,
        previous=page_url(page_number - 1, only) if page_number > 1 else None,
        next=page_url(page_number + 1, only) if found.more else None,
    )


def outbox_email(entry: dict[str, Any]) -> dict[str, Any]:
    """An outbox entry as the page shows it: the job id's parts named."""
    try:
        job = JobId.parse(str(entry.get("job", "")))
        user_id, loop_id, step, kind = job.user_id, str(job.loop_id), str(job.step), str(job.kind)
    except ValueError:
        user_id, loop_id, step, kind = "?", "?", "?", "?"
    return {
        **entry,
        "user_id": user_id,
        "user_url": page_url(1, OutboxFilter(user_id=user_id)),
        "loop": loop_id,
        "step": step,
        "kind": kind,
        "sent": when(entry.get("at")),
    }


def page_url(number: int, only: OutboxFilter) -> str:
    """The outbox's page `number` under the same filters."""
    query = {"user_id": only.user_id, "loop": only.loop_id, "page": number if number > 1 else None}
    given = {name: value for name, value in query.items() if value is not None}
    return f"{PATH}?{urlencode(given)}" if given else PATH


def loop_choices(request: Request, only: OutboxFilter) -> list[str]:
    """The loops to filter by: those loaded, and the one asked for if it is not."""
    loaded = list(services_of(request).loops)
    asked = [only.loop_id] if only.loop_id and only.loop_id not in loaded else []
    return loaded + asked
