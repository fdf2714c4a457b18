"""`activation import-clerk`: the users a Clerk instance already has, recorded as a `user.updated`
records them (versioned by Clerk's `updated_at`, tombstones respected), so milestone loops and
the dashboard know them; activation loops start for them only with `--enter-loops`. Idempotent."""

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TextIO

from clerk_backend_api import models
from pydantic import ValidationError

from app.cli.clerk_users import KEY_HINT, PAGE_SIZE, ClerkUsers, clerk_users
from app.cli.shared import shared_settings
from app.clock import Clock, ServerClock, datetime_ms
from app.runtime import build_store
from app.settings import Settings
from app.storage.records import UserProfile, UserWrite
from app.storage.store import Store
from app.web.webhooks.clerk import ClerkUser

STORAGE_CONCURRENCY = 10  # a page's users are compared and stored this many at a time
LINE_EVERY = 1_000  # users between progress lines when stderr is not a terminal
BAR_WIDTH = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `activation import-clerk`."""
    parser.add_argument(
        "--since",
        type=parse_since,
        help="only users created from then on: YYYY-MM-DD (UTC) or an RFC 3339 time",
    )
    parser.add_argument(
        "--enter-loops",
        action="store_true",
        help="record them as new signups: activation loops start and their emails go out",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read Clerk, say what would change, write nothing"
    )


def parse_since(text: str) -> int:
    """`2026-01-15` (midnight UTC) or an RFC 3339 time, as epoch ms."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ) from None
    return datetime_ms(moment)


@dataclass(frozen=True, slots=True)
class ImportOptions:
    since_ms: int | None = None  # users created before this are left out
    enter_loops: bool = False  # record them as signups (registration set: loops start)
    dry_run: bool = False


class Outcome(StrEnum):
    """What the import did, or would do, with one Clerk user."""

    IMPORTED = "imported"  # not stored before
    UPDATED = "updated"  # Clerk's data was newer (or, with --enter-loops, now registered)
    UNCHANGED = "unchanged"  # storage holds this version or a newer one
    SKIPPED = "skipped (deleted)"  # a tombstone: deleted users stay deleted
    INVALID = "invalid"  # a user the service cannot store (an id it refuses)
    UNREADABLE = "skipped (unreadable)"  # a user the SDK's model cannot read: named on stderr


OUTCOMES_IF_ANY = frozenset({Outcome.INVALID, Outcome.UNREADABLE})  # in the summary if any


@dataclass
class Tally:
    outcomes: Counter[Outcome] = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        """`imported N, updated M, unchanged K, skipped (deleted) D` (then `, invalid I` and
        `, skipped (unreadable) U` if any)."""
        shown = [o for o in Outcome if o not in OUTCOMES_IF_ANY or self.outcomes[o]]
        return ", ".join(f"{outcome.value} {self.outcomes[outcome]}" for outcome in shown)


def profile_of(user: models.User) -> UserProfile | None:
    """The profile a `user.updated` with this user would store; None when it cannot be."""
    try:
        return ClerkUser.model_validate(user, from_attributes=True).to_profile()
    except ValidationError:
        return None


def delivery_id(profile: UserProfile, version_ms: int, *, enter_loops: bool) -> str:
    """The id the user's record is applied once under: one per version and way of recording."""
    way = "signup" if enter_loops else "profile"
    return f"import-clerk:{way}:{profile.id}:{version_ms}"


class Importer:
    """Each Clerk user compared with what storage holds (one or two reads), and recorded through
    the same script as Clerk's webhooks when it would change something."""

    def __init__(self, store: Store, clock: Clock, options: ImportOptions) -> None:
        self.store = store
        self.clock = clock
        self.options = options

    async def settle_all(self, users: Sequence[models.User]) -> list[Outcome]:
        limit = asyncio.Semaphore(STORAGE_CONCURRENCY)

        async def settle(user: models.User) -> Outcome:
            async with limit:
                return await self.settle(user)

        return list(await asyncio.gather(*(settle(user) for user in users)))

    async def settle(self, user: models.User) -> Outcome:
        profile = profile_of(user)
        if profile is None:
            return Outcome.INVALID
        version_ms = profile.updated_at or profile.created_at or 0
        planned = await self.plan(profile.id, version_ms)
        if self.options.dry_run or planned not in (Outcome.IMPORTED, Outcome.UPDATED):
            return planned
        return await self.record(profile, version_ms)

    async def plan(self, user_id: str, version_ms: int) -> Outcome:
        stored = await self.store.users.get(user_id)
        if stored is None:
            deleted = await self.store.users.is_deleted(user_id)
            return Outcome.SKIPPED if deleted else Outcome.IMPORTED
        newer = version_ms > stored.version_ms
        unregistered = self.options.enter_loops and stored.registered_at_ms is None
        return Outcome.UPDATED if newer or unregistered else Outcome.UNCHANGED

    async def record(self, profile: UserProfile, version_ms: int) -> Outcome:
        """Recorded as `user.updated` (no registration) or, with --enter-loops, `user.created`;
        the script decides against what is stored by then (a webhook may have come first)."""
        enter_loops = self.options.enter_loops
        write = await self.store.users.record(
            delivery_id(profile, version_ms, enter_loops=enter_loops),
            profile,
            created=enter_loops,
            version_ms=version_ms,
            now_ms=self.clock(),
        )
        return outcome_of(write, enter_loops=enter_loops)


def outcome_of(write: UserWrite, *, enter_loops: bool) -> Outcome:
    """The script's answer as the summary counts it. `stale` keeps the newer stored profile;
    with --enter-loops the registration is still set, so the user did change."""
    if write is UserWrite.CREATED:
        return Outcome.IMPORTED
    if write is UserWrite.UPDATED or (write is UserWrite.STALE and enter_loops):
        return Outcome.UPDATED
    if write in (UserWrite.DELETED, UserWrite.TOMBSTONED):
        return Outcome.SKIPPED
    return Outcome.UNCHANGED  # stale, or this very record applied before (duplicate)


class Progress:
    """How far the import is, on stderr: a bar redrawn in place on a terminal, a plain line
    every LINE_EVERY users otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on_terminal = stream.isatty()
        self.total: int | None = None  # Clerk's count, for the bar
        self.drawn = False  # a bar is on screen with no line end yet
        self.next_line_at = LINE_EVERY

    def update(self, tally: Tally) -> None:
        if self.on_terminal:
            self.stream.write(f"\r{bar(tally.read, self.total)}  {tally.summary()}")
            self.stream.flush()
            self.drawn = True
        elif tally.read >= self.next_line_at:
            self.note(f"{users_read(tally.read, self.total)}: {tally.summary()}")
            self.next_line_at = (tally.read // LINE_EVERY + 1) * LINE_EVERY

    def note(self, line: str) -> None:
        self.end()
        print(line, file=self.stream, flush=True)

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def users_read(done: int, total: int | None) -> str:
    return f"{done}/{total} user(s) read" if total else f"{done} user(s) read"


def bar(done: int, total: int | None) -> str:
    if not total:
        return users_read(done, total)
    filled = min(BAR_WIDTH, done * BAR_WIDTH // total)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}"


async def walk(
    clerk: ClerkUsers, importer: Importer, options: ImportOptions, progress: Progress
) -> Tally:
    """Page through Clerk's users, newest first, until the last page or the first user created
    before `since` (every later one is older still)."""
    tally = Tally()
    offset, since = 0, options.since_ms
    while True:
        page = await clerk.page(offset)
        for line in page.unreadable:
            progress.note(line)
        tally.outcomes[Outcome.UNREADABLE] += len(page.unreadable)
        wanted = [user for user in page.users if since is None or user.created_at >= since]
        tally.outcomes.update(await importer.settle_all(wanted))
        progress.update(tally)
        if page.listed < PAGE_SIZE or len(wanted) < len(page.users):
            return tally
        offset += PAGE_SIZE


async def import_users(settings: Settings, options: ImportOptions, progress: Progress) -> Tally:
    """The import, start to end, on the configured storage and Clerk instance."""
    async with clerk_users(settings, progress.note) as clerk:
        progress.total = await clerk.count(options.since_ms)  # a refused key stops it here
        store = build_store(settings)
        try:
            await store.open()
            clock = ServerClock(store.server_time_ms)  # registrations on Redis's time, as loops
            await clock.try_sync()
            return await walk(clerk, Importer(store, clock, options), options, progress)
        finally:
            progress.end()
            await store.close()


def run(args: argparse.Namespace) -> int:
    settings = shared_settings("import-clerk", {"clerk_secret_key": KEY_HINT})
    options = ImportOptions(args.since, args.enter_loops, args.dry_run)
    tally = asyncio.run(import_users(settings, options, Progress(sys.stderr)))
    print(("dry run, nothing written: " if options.dry_run else "") + tally.summary())
    return 0
