"""The actions reported to the service, for their health (`GET /v1/actions/health`).

Counting them costs the intake no Redis command: each process counts the actions it accepts in
memory (`SightingsBuffer`: a dict look-up and an increment per action) and adds them to storage
at most every `SIGHTINGS_FLUSH_S`, and when it stops, with one script for the whole batch
(`Sightings.flush`). A name the process has not added to storage yet is added within
`FIRST_SIGHTING_FLUSH_S` instead, so `activation check` and the dashboard agree on what is
reported at all (the counts may still wait). Shard 0 holds them, `seen` and `seen:<day>` (see
`keys`).
"""

import asyncio
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from app.clock import DAY_MS, HOUR_MS, utc_day
from app.storage.records import as_fields
from app.storage.redis_client import CommandArg
from app.storage.scripts import SIGHTINGS, SIGHTINGS_READ, ScriptRunner, int_or_none

logger = logging.getLogger(__name__)

HOURS_PER_DAY = 24
SIGHTINGS_FLUSH_S = 1800.0
FIRST_SIGHTING_FLUSH_S = 1.0  # a name new to storage waits at most this long (one flush a second)
MAX_BUFFERED_NAMES = 200  # names no loop watches, buffered by one process between two flushes
MAX_SEEN_NAMES = 1000  # names no loop watches, kept in `seen`
SEEN_KEPT_MS = 30 * DAY_MS  # a name not reported for this long leaves `seen` (unless watched)
DAYS_READ = 8  # today and the 7 days before: every hour of the last 7 days
SEEN_DAY_TTL_S = DAYS_READ * 24 * 3600


@dataclass(slots=True)
class Seen:
    """Sightings of actions: when each was last reported (epoch ms), and how many times in each
    UTC hour (`epoch ms // HOUR_MS`)."""

    last_ms: dict[str, int] = field(default_factory=dict)
    hours: dict[str, dict[int, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.last_ms or self.hours)

    def names(self) -> set[str]:
        return self.last_ms.keys() | self.hours.keys()

    def add(self, name: str, hour: int, count: int) -> None:
        hours = self.hours.setdefault(name, {})
        hours[hour] = hours.get(hour, 0) + count

    def merge(self, other: "Seen") -> None:
        """`other` added in: the later time of each name kept, the counts summed."""
        for name, at_ms in other.last_ms.items():
            self.last_ms[name] = max(at_ms, self.last_ms.get(name, at_ms))
        for name, hours in other.hours.items():
            for hour, count in hours.items():
                self.add(name, hour, count)

    def count(self, name: str, since_hour: int) -> int:
        """Reports of `name` in `since_hour` and the hours after it."""
        return sum(n for hour, n in self.hours.get(name, {}).items() if hour >= since_hour)


class SightingsBuffer:
    """This process's sightings not yet in storage.

    At most `max_names` names no loop watches are buffered between two flushes (a client sending
    made-up names cannot grow it, nor storage); the sightings of more are left out, counted in
    `overflow` and logged at the next flush. Watched names are always kept. A flush and a read
    that adds the buffer to what storage holds take turns (`lock`), so neither misses nor counts
    twice a batch on its way."""

    def __init__(
        self, watched: Collection[str] = (), *, max_names: int = MAX_BUFFERED_NAMES
    ) -> None:
        self.watched = frozenset(watched)
        self.max_names = max_names
        self.overflow = 0
        self.lock = asyncio.Lock()
        self._seen = Seen()
        self._unwatched = 0
        self._stored: set[str] = set()  # names this process added to storage (bounded, as above)

    def __repr__(self) -> str:
        return f"SightingsBuffer(names={len(self._seen.last_ms)}, overflow={self.overflow})"

    @property
    def pending(self) -> Seen:
        """What is buffered (not a copy: merge it at once)."""
        return self._seen

    def saw(self, names: Iterable[str], now_ms: int) -> bool:
        """Actions accepted now (the intake's hot path: no I/O, a few dict operations each).
        True when one of them is a name this process has not added to storage yet: storage
        should hear of it soon (`FIRST_SIGHTING_FLUSH_S`)."""
        hour = now_ms // HOUR_MS
        hours_of, last_ms = self._seen.hours, self._seen.last_ms
        new = False
        for name in names:
            hours = hours_of.get(name)
            if hours is None:
                if not self._admits(name, 1):
                    continue
                hours = hours_of[name] = {}
                new = new or name not in self._stored
            hours[hour] = hours.get(hour, 0) + 1
            if now_ms > last_ms.get(name, 0):
                last_ms[name] = now_ms
        return new

    def stored(self, batch: Seen) -> None:
        """A batch storage took: its names are known there now (at most `max_names` of those no
        loop watches are remembered, so a client sending made-up names cannot grow this)."""
        unwatched = len(self._stored - self.watched)
        for name in batch.names():
            if name in self._stored:
                continue
            if name not in self.watched:
                if unwatched >= self.max_names:
                    continue
                unwatched += 1
            self._stored.add(name)

    def _admits(self, name: str, sightings: int) -> bool:
        """Whether a name new to the buffer fits in it."""
        if name in self.watched:
            return True
        if self._unwatched >= self.max_names:
            self.overflow += sightings
            return False
        self._unwatched += 1
        return True

    def take(self) -> Seen:
        """Everything buffered, to flush; the buffer starts again empty."""
        taken, self._seen, self._unwatched = self._seen, Seen(), 0
        if self.overflow:
            logger.warning(
                "sightings: %d report(s) of actions left out: over %d names no loop watches "
                "since the last flush",
                self.overflow,
                self.max_names,
            )
            self.overflow = 0
        return taken

    def restore(self, batch: Seen, now_ms: int) -> None:
        """A batch storage did not take, back in the buffer, within the same limit; hours older
        than the health reads are left out (the buffer stays bounded through an outage)."""
        oldest = now_ms // HOUR_MS - DAYS_READ * HOURS_PER_DAY
        for name, at_ms in batch.last_ms.items():
            hours = {h: n for h, n in batch.hours.get(name, {}).items() if h >= oldest}
            if name in self._seen.last_ms or self._admits(name, sum(hours.values())):
                self._seen.merge(Seen({name: at_ms}, {name: hours}))


class Sightings(ScriptRunner):
    """The sightings in storage (shard 0's `seen` and `seen:<day>`): each call one round trip."""

    async def flush(
        self, batch: Seen, *, watched: Collection[str], max_names: int = MAX_SEEN_NAMES
    ) -> tuple[int, int]:
        """Add a batch; returns (names kept, names left out because `seen` holds `max_names`
        names no loop watches). One EVALSHA, running an HMGET and an HSET of `seen` and, for
        each day the batch falls on, an EXISTS, an HMGET and an HSET (a day it makes: an EXPIRE
        instead of the HMGET); an HLEN when a name is new to `seen`. Never a command per name."""
        shard = self.keys.shard(0)
        days = sorted({hour // HOURS_PER_DAY for hours in batch.hours.values() for hour in hours})
        index = {day: i for i, day in enumerate(days, 1)}
        args = sightings_args(batch, index, watched=watched, max_names=max_names)
        keys = [shard.seen, *(shard.seen_day(utc_day(day * DAY_MS)) for day in days)]
        kept, dropped = await self.run(SIGHTINGS, keys, args)
        return int(kept), int(dropped)

    async def read(self, now_ms: int, *, watched: Iterable[str]) -> Seen:
        """When each action was last reported, and its counts per hour over the last
        `DAYS_READ` UTC days: one script. Names not reported for `SEEN_KEPT_MS` that no loop
        watches are forgotten on the way."""
        shard = self.keys.shard(0)
        today = now_ms // DAY_MS
        days = range(today - DAYS_READ + 1, today + 1)
        keys = [shard.seen, *(shard.seen_day(utc_day(day * DAY_MS)) for day in days)]
        args = sightings_read_args(forget_before_ms=now_ms - SEEN_KEPT_MS, watched=watched)
        kept, *hashes = await self.run(SIGHTINGS_READ, keys, args)
        seen = Seen({name: int(at_ms) for name, at_ms in as_fields(kept).items()})
        for day, flat in zip(days, hashes, strict=True):
            for name_hour, count in as_fields(flat).items():
                name, _, hour = name_hour.rpartition("@")
                seen.add(name, day * HOURS_PER_DAY + int(hour), int(count))
        return seen

    async def last_seen(self, names: Sequence[str]) -> dict[str, int | None]:
        """When each of `names` was last reported (None: never): one HMGET of `seen`."""
        if not names:
            return {}
        reply = await self.conn.call("HMGET", self.keys.shard(0).seen, *names)
        return {name: int_or_none(at_ms) for name, at_ms in zip(names, reply, strict=True)}


# --- the scripts' arguments, each in the order its header gives ---------------------------------


def sightings_args(
    batch: Seen, day_index: dict[int, int], *, watched: Collection[str], max_names: int
) -> list[CommandArg]:
    """sightings.lua's ARGV: `day_index` each day's (days since the epoch) place among the
    day hashes in KEYS (1: KEYS[2])."""
    args: list[CommandArg] = [max_names, SEEN_DAY_TTL_S]
    for name, at_ms in batch.last_ms.items():
        hours = batch.hours.get(name, {}).items()
        counts = ",".join(
            f"{day_index[h // HOURS_PER_DAY]}@{h % HOURS_PER_DAY:02d}={n}" for h, n in hours
        )
        args += [name, at_ms, "1" if name in watched else "", counts]
    return args


def sightings_read_args(*, forget_before_ms: int, watched: Iterable[str]) -> list[CommandArg]:
    """sightings_read.lua's ARGV."""
    return [forget_before_ms, *watched]
