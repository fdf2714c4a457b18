"""Fixed-window counters kept in storage so every web process shares them (one script,
`fixed_window.lua`, one round trip per request): the actions each user's browser reports with a
Clerk session token (`app.web.v1.browser_limits`) and the dashboard's failed logins per client
(`app.web.pages.dashboard`); and the one way a window's end becomes a `Retry-After`."""

import math
from dataclasses import dataclass

from app.storage.redis_client import CommandArg
from app.storage.scripts import FIXED_WINDOW, ScriptRunner


@dataclass(frozen=True, slots=True)
class Window:
    """What a counter answered: whether the count was added, the count in its window, and how
    long until the window ends (when a refused caller may try again)."""

    taken: bool
    count: int
    left_ms: int

    @property
    def retry_after_s(self) -> int:
        """The window's end as an HTTP `Retry-After`: whole seconds, at least 1."""
        return max(math.ceil(self.left_ms / 1000), 1)


class Rates(ScriptRunner):
    """The shared fixed-window counters."""

    async def take_browser_actions(
        self, user_id: str, count: int, *, limit: int, window_ms: int
    ) -> Window:
        """Count `count` more actions from the user's browser in the current window, unless that
        passes `limit`: then nothing is counted."""
        return await self._window(self.keys.browser_rate(user_id), "take", count, limit, window_ms)

    async def login_failures(self, client: str, *, window_ms: int) -> Window:
        """Failed dashboard logins from `client` in the current window (nothing counted)."""
        return await self._window(self.keys.login_failures(client), "read", 0, 0, window_ms)

    async def count_login_failure(self, client: str, *, window_ms: int) -> Window:
        """One more failed login from `client` (the first starts a window)."""
        return await self._window(self.keys.login_failures(client), "count", 1, 0, window_ms)

    async def _window(self, key: str, mode: str, count: int, limit: int, window_ms: int) -> Window:
        args = fixed_window_args(mode=mode, count=count, limit=limit, window_ms=window_ms)
        taken, used, left_ms = await self.run(FIXED_WINDOW, [key], args)
        return Window(bool(int(taken)), int(used), int(left_ms))


def fixed_window_args(*, mode: str, count: int, limit: int, window_ms: int) -> list[CommandArg]:
    """fixed_window.lua's ARGV: `mode` "take", "count" or "read"."""
    return [mode, count, limit, window_ms]
