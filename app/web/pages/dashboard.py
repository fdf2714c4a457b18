"""Operator pages, server-rendered (Jinja2, no JavaScript): `GET /dashboard` (each loop's rows:
an activation loop's funnel, activation rate and time to activation, a milestone's reached, sent
and failed; sends and failures per day, dead letters, experiments) and the login form that opens
it and `GET /outbox` (`app.web.pages.outbox`) in a browser.

Who may see them is decided by `app.web.gate` (the `OPERATOR` policy: the API key as a bearer token,
or a session cookie that was not revoked); a refused caller gets this module's login form. Login
attempts are limited per client address (`app.web.sessions`); logout revokes the session.
"""

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.clock import last_days
from app.engine.email_jobs import EmailJob
from app.engine.funnel import TTA_BUCKETS, card_rows, dead_loop, loop_summary
from app.engine.loops import Loop, LoopType
from app.errors import StorageError
from app.settings import Settings
from app.signing import secret_matches
from app.storage.rates import Window
from app.storage.records import StatsReply
from app.storage.store import Store
from app.web import auth, sessions
from app.web.auth import Access, Verdict
from app.web.deps import ClockDep, SettingsDep, StoreDep, services_of
from app.web.pages import panels
from app.web.pages.layout import PAGE_ENV, page
from app.web.v1.action_health import action_health

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operator"])

DAYS_SHOWN = 14
DEAD_SHOWN = 3
LOGIN_MAX_BODY_BYTES = 4096  # the form: a key and a page name
PAGES = ("/dashboard", "/outbox")


@dataclass(frozen=True, slots=True)
class DayCount:
    day: str
    sent: int
    failed: int


@dataclass(frozen=True, slots=True)
class LoopStats:
    """What the dashboard shows for one loop."""

    loop: Loop
    counters: Mapping[str, int]
    days: list[DayCount]
    dead_count: int = 0
    dead: list[EmailJob] = field(default_factory=list)

    def count(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def rows(self) -> list[tuple[str, str, int]]:
        """The card's counters (`funnel.card_rows`): name, label, value."""
        return card_rows(self.loop, self.counters)

    @property
    def measures_activation(self) -> bool:
        """A rate and a time to activation: an activation loop's (a milestone has no deadline)."""
        return self.loop.type is LoopType.ACTIVATION

    @property
    def activation_rate(self) -> float | None:
        """Condition met by the deadline, out of entered; None before anyone entered."""
        entered = self.count("entered")
        return self.count("met") / entered if entered else None

    @property
    def histogram(self) -> list[tuple[str, int]]:
        return [(label, self.count(f"tta:{suffix}")) for suffix, label, _ in TTA_BUCKETS]


def day_counts(
    loop_id: str, days: list[str], daily: Mapping[str, Mapping[str, int]]
) -> list[DayCount]:
    """A loop's sends and failures per day, from the `daily` hashes' `<loop>:sent`/`:failed`."""
    empty: Mapping[str, int] = {}
    return [
        DayCount(
            day,
            daily.get(day, empty).get(f"{loop_id}:sent", 0),
            daily.get(day, empty).get(f"{loop_id}:failed", 0),
        )
        for day in days
    ]


def refusal(
    request: Request, verdict: Verdict, error: str = "", status_code: int = 401
) -> HTMLResponse:
    """401: the login form, or why nobody can log in."""
    if verdict is Verdict.UNCONFIGURED:
        return page("refused.html", 401, title="Not configured")
    target = request.url.path if request.url.path in PAGES else "/dashboard"
    return page("login.html", status_code, title="Log in", next=target, error=error)


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of an inline SVG chart, in the chart's own units."""

    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


def bars(values: Sequence[tuple[str, int]], *, width: float, height: float) -> list[Bar]:
    """Bars side by side filling `width`, scaled so the largest reaches `height`."""
    top = max((value for _, value in values), default=0) or 1
    slot = width / max(len(values), 1)
    return [
        Bar(
            label,
            value,
            i * slot + slot * 0.15,
            height - value / top * height,
            slot * 0.7,
            value / top * height,
        )
        for i, (label, value) in enumerate(values)
    ]


def percent(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "n/a"


def when(at_ms: int | None) -> str:
    return panels.when(at_ms, seconds=True)


PAGE_ENV.globals.update(bars=bars, percent=percent, when=when)


async def dead_by_loop(store: Store, dead_ids: Iterable[str]) -> dict[str, list[EmailJob]]:
    """The first few dead-letter jobs of each loop, with their last error."""
    chosen: dict[str, list[str]] = {}
    for job_id in dead_ids:
        ids = chosen.setdefault(dead_loop(job_id), [])
        if len(ids) < DEAD_SHOWN:
            ids.append(job_id)
    jobs: dict[str, list[EmailJob]] = {}
    for loop_id, ids in chosen.items():
        found = [await store.queries.get_job(job_id) for job_id in ids]
        jobs[loop_id] = [job for job in found if job is not None]
    return jobs


def loop_stats(loop: Loop, reply: StatsReply, dead: dict[str, list[EmailJob]]) -> LoopStats:
    days = list(reply.days)
    dead_count = sum(1 for job_id in reply.dead_ids if dead_loop(job_id) == loop.id)
    return LoopStats(
        loop=loop,
        counters=reply.loops.get(loop.id, {}),
        days=day_counts(loop.id, days, reply.days),
        dead_count=dead_count,
        dead=dead.get(loop.id, []),
    )


@router.get("/dashboard", response_class=HTMLResponse, responses={401: {"description": "log in"}})
@auth.policy(Access.OPERATOR, refuse=refusal)
async def dashboard(
    request: Request, store: StoreDep, settings: SettingsDep, clock: ClockDep
) -> HTMLResponse:
    """Each loop's funnel, activation rate, time to activation, sends per day, dead letters."""
    loops: dict[str, Loop] = services_of(request).loops
    reply = await store.queries.read_stats(list(loops), last_days(clock(), DAYS_SHOWN))
    dead = await dead_by_loop(store, reply.dead_ids)
    return page(
        "dashboard.html",
        title="Dashboard",
        loops=[loop_stats(loop, reply, dead) for loop in loops.values()],
        figures=[loop_summary(loop, reply.loops.get(loop.id, {})) for loop in loops.values()],
        health=await health_of(request),
        dead_total=reply.dead_count,
        storage=settings.storage_kind.value,
        outbox_mode=settings.resend_api_key is None,
        now=when(clock()),
    )


async def health_of(request: Request) -> dict[str, Any] | None:
    """The watched actions' health for the banner; a storage failure leaves the banner out."""
    services = services_of(request)
    try:
        seen = await services.seen_now()
    except StorageError as exc:
        logger.warning("dashboard: action health not read: %s", exc)
        return None
    return action_health(services.watched_actions, seen, services.clock()).model_dump()


@router.post("/dashboard/login", response_class=HTMLResponse, include_in_schema=False)
@auth.policy(Access.PUBLIC, max_body_bytes=LOGIN_MAX_BODY_BYTES)
async def login(
    request: Request, settings: SettingsDep, store: StoreDep, clock: ClockDep
) -> Response:
    """The login form: the API key in, a session cookie out; at most LOGIN_FAILURES_ALLOWED
    failures per client address per LOGIN_WINDOW_S, after which every try answers 429."""
    if settings.activation_api_key is None:
        return refusal(request, Verdict.UNCONFIGURED)
    client = client_address(request)
    window_ms = sessions.LOGIN_WINDOW_S * 1000
    failures = await store.rates.login_failures(client, window_ms=window_ms)
    if failures.count >= sessions.LOGIN_FAILURES_ALLOWED:  # the key is not even looked at
        logger.info("dashboard login from %s refused: too many failed attempts", client)
        return too_many_attempts(request, failures)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given, target = form.get("key", [""])[0], form.get("next", ["/dashboard"])[0]
    if not secret_matches(settings.activation_api_key, given.encode()):
        failures = await store.rates.count_login_failure(client, window_ms=window_ms)
        logger.warning(
            "dashboard login from %s refused: wrong key (%d failed in this window, %d allowed)",
            client, failures.count, sessions.LOGIN_FAILURES_ALLOWED,
        )  # fmt: skip
        return refusal(request, Verdict.REFUSED, "That is not the API key.")
    return logged_in(request, settings, target, clock())


def client_address(request: Request) -> str:
    """The caller's address as the server reports it (behind a proxy: uvicorn's
    `--forwarded-allow-ips` makes it the client's), cut to what a key may hold."""
    host = request.client.host if request.client is not None else ""
    return "".join(c for c in host[:64] if c.isprintable() and not c.isspace()) or "unknown"


def too_many_attempts(request: Request, failures: Window) -> HTMLResponse:
    retry_after_s = failures.retry_after_s
    minutes = math.ceil(retry_after_s / 60)
    error = f"Too many failed attempts. Try again in {minutes} minute(s)."
    response = refusal(request, Verdict.REFUSED, error, status_code=429)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def logged_in(request: Request, settings: Settings, target: str, now_ms: int) -> Response:
    response = RedirectResponse(target if target in PAGES else "/dashboard", status_code=303)
    api_key = settings.activation_api_key
    assert api_key is not None
    response.set_cookie(
        sessions.COOKIE,
        sessions.issue(api_key.get_secret_value(), now_ms),
        max_age=sessions.SESSION_S,
        path="/",
        httponly=True,
        samesite="strict",
        # behind a TLS-terminating proxy the request says http: PUBLIC_URL tells the truth
        secure=request.url.scheme == "https" or settings.links_url.startswith("https://"),
    )
    return response


@router.post("/dashboard/logout", include_in_schema=False)
@auth.policy(Access.PUBLIC, max_body_bytes=LOGIN_MAX_BODY_BYTES)
async def logout(
    request: Request, settings: SettingsDep, store: StoreDep, clock: ClockDep
) -> Response:
    """Ends the session: revoked in storage until it would have expired, and the cookie dropped."""
    cookie = request.cookies.get(sessions.COOKIE)
    if settings.activation_api_key is not None and cookie is not None:
        now_ms = clock()
        session = sessions.read(settings.activation_api_key.get_secret_value(), cookie, now_ms)
        if session is not None:
            await store.logins.revoke_session(session.id, ttl_ms=session.expires_at_ms - now_ms)
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response
