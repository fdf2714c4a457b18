"""The one source of time: an injected callable returning epoch milliseconds; and the one home of
time's units and conversions (epoch ms from a datetime or seconds, a moment's UTC day).

In a running service that callable is a `ServerClock`: Redis's own clock (TIME), read when the
process starts and every few minutes, and advanced in between by this machine's monotonic clock.
Every process of the service (web, workers) thus stamps events, judges deadlines and leases on the
same clock, whatever their machines' clocks say; a machine's skew is measured, logged and exported.
Tests and the simulator inject clocks of their own.
"""

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

logger = logging.getLogger(__name__)

Clock = Callable[[], int]

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Durations as loop files and settings write them: `<integer><s|m|h|d|w>`.
DURATION_PATTERN = r"^[0-9]*[1-9][0-9]*[smhdw]$"
DURATION_EXAMPLES = "30s, 5m, 2h, 3d"
UNIT_MS = {"s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}
# Far past any sensible wait, and still exact in a Lua double when added to an epoch-ms time.
MAX_DURATION_MS = 100 * 365 * UNIT_MS["d"]
_DURATION = re.compile(r"([0-9]+)([smhdw])")

RESYNC_S = 600.0  # a monotonic clock drifts by parts per million: minutes apart is plenty
RETRY_S = 15.0  # after a failed sync
SKEW_WARNING_MS = 1000


# Epoch values below this are seconds, above it milliseconds: 1e11 s is the year 5138, 1e11 ms 1973.
_SECONDS_UPPER_BOUND = 10**11


def to_epoch_ms(value: int | float | None) -> int | None:
    """Clerk sends epoch milliseconds; older payloads and hand-made ones send seconds."""
    if value is None:
        return None
    return int(value * 1000) if value < _SECONDS_UPPER_BOUND else int(value)


def datetime_ms(moment: datetime) -> int:
    """A moment as epoch ms; a naive one is UTC."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def utc_day(at_ms: int) -> str:
    """The UTC day a moment falls on, `yyyy-mm-dd`."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d")


def utc_time(at_ms: int, *, seconds: bool = False) -> str:
    """A moment in UTC as people read it: `2026-01-08 09:00 UTC` (or to the second)."""
    shape = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime(shape)


def last_days(now_ms: int, days: int) -> list[str]:
    """The last `days` UTC days, oldest first, today included."""
    today = datetime.fromtimestamp(now_ms / 1000, UTC)
    return [(today - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(days - 1, -1, -1)]


def parse_duration(text: str) -> int:
    """`30s`, `5m`, `2h`, `3d`, `1w` in milliseconds; ValueError for anything else."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration like {DURATION_EXAMPLES}")
    duration_ms = int(match[1]) * UNIT_MS[match[2]]
    if duration_ms == 0:
        raise ValueError(f"{text!r} is zero: a duration must be longer, like {DURATION_EXAMPLES}")
    if duration_ms > MAX_DURATION_MS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return duration_ms


_TIME_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")
TIME_WINDOW_PATTERN = r"^[0-9]{1,2}:[0-9]{2}-[0-9]{1,2}:[0-9]{2}$"
OFF = "off"  # the word that turns a time setting (quiet hours, the frequency cap) off


def is_off(text: str) -> bool:
    """Whether a setting's text says `off` (any case, any spaces around)."""
    return text.strip().lower() == OFF


def parse_time_window(text: str) -> tuple[int, int]:
    """A daily window of local time, `"21:00-08:00"`, as its start and end in minutes after
    midnight (past midnight when the end comes first); ValueError naming what is wrong."""
    match = _TIME_WINDOW.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a window of local time like 21:00-08:00")
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    if start_h > 23 or end_h > 23 or start_m > 59 or end_m > 59:
        raise ValueError(f"{text!r} names a time that is not on a clock (00:00 to 23:59)")
    if (start_h, start_m) == (end_h, end_m):
        raise ValueError(f"{text!r} starts when it ends")
    return start_h * 60 + start_m, end_h * 60 + end_m


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ServerClock:
    """Epoch ms on the storage server's clock; this machine's wall clock until the first sync."""

    def __init__(
        self,
        read_server_ms: Callable[[], Awaitable[int]],
        *,
        resync_s: float = RESYNC_S,
        on_skew: Callable[[float], None] | None = None,
    ) -> None:
        self._read_server_ms = read_server_ms
        self.resync_s = resync_s
        self._on_skew = on_skew or (lambda _skew_s: None)
        self._server_ms: int | None = None  # the server's time at the last sync...
        self._mono_ns = 0  # ...and this machine's monotonic clock at that moment
        self.skew_ms: int | None = None  # this machine's wall clock minus the server's

    def __repr__(self) -> str:
        return f"ServerClock(synced={self.synced}, skew_ms={self.skew_ms})"

    @property
    def synced(self) -> bool:
        return self._server_ms is not None

    def __call__(self) -> int:
        if self._server_ms is None:
            return system_clock_ms()
        return self._server_ms + (time.monotonic_ns() - self._mono_ns) // 1_000_000

    async def sync(self) -> None:
        """Read the server's clock once; the reading is placed halfway through its round trip."""
        before_ns = time.monotonic_ns()
        server_ms = await self._read_server_ms()
        after_ns = time.monotonic_ns()
        half_ms = (after_ns - before_ns) // 2_000_000
        self._server_ms, self._mono_ns = server_ms, (before_ns + after_ns) // 2
        self._note_skew(system_clock_ms() - half_ms - server_ms)

    def _note_skew(self, skew_ms: int) -> None:
        previous, self.skew_ms = self.skew_ms, skew_ms
        self._on_skew(skew_ms / 1000)
        if abs(skew_ms) >= SKEW_WARNING_MS and (previous is None or abs(previous - skew_ms) > 500):
            logger.warning(
                "this machine's clock is %.1f s %s Redis's; the service keeps Redis's time",
                abs(skew_ms) / 1000,
                "ahead of" if skew_ms > 0 else "behind",
            )

    async def try_sync(self) -> bool:
        """`sync`, with storage trouble logged instead of raised (the last reading stays)."""
        try:
            await self.sync()
        except Exception as exc:
            logger.warning("clock: Redis TIME not read (%s); retrying in %.0f s", exc, RETRY_S)
            return False
        return True

    async def run(self) -> None:
        """Keep in sync until cancelled (after a first `try_sync`); a failed sync comes back
        sooner."""
        delay_s = self.resync_s if self.synced else RETRY_S
        while True:
            await asyncio.sleep(delay_s)
            delay_s = self.resync_s if await self.try_sync() else RETRY_S
