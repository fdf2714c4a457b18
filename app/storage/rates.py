"""Rate limits kept in storage so every web process shares them: the actions each user's browser
reports with a Clerk session token (`intake.browser`)."""

from dataclasses import dataclass

from app.storage.scripts import RATE, ScriptRunner


@dataclass(frozen=True, slots=True)
class Taken:
    """What a rate limit answered: whether the request's share was taken, and how long until
    the current window ends (when a refused caller may try again)."""

    taken: bool
    window_left_ms: int


class Rates(ScriptRunner):
    """Fixed-window counters with their expiry: one script, one round trip, per request."""

    async def take_browser_actions(
        self, user_id: str, count: int, *, limit: int, window_ms: int
    ) -> Taken:
        """Count `count` more actions from the user's browser in the current window, unless that
        passes `limit`: then nothing is counted."""
        keys = [self.keys.browser_rate(user_id)]
        taken, left_ms = await self.run(RATE, keys, [count, limit, window_ms])
        return Taken(bool(int(taken)), int(left_ms))
