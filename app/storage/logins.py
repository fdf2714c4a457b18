"""Operator access kept in storage so every web process shares it: dashboard sessions logged
out, and failed logins per client."""

from app.storage.scripts import LOGIN_FAILURES, ScriptRunner


class Logins(ScriptRunner):
    """Revoked dashboard sessions and failed logins, with TTLs (nothing kept for long)."""

    async def revoke_session(self, session_id: str, *, ttl_ms: int) -> None:
        """A dashboard session logged out: refused from now until it would have expired."""
        key = self.keys.session_revoked(session_id)
        await self.conn.call("SET", key, "1", "PX", max(ttl_ms, 1))

    async def session_revoked(self, session_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.session_revoked(session_id)))

    async def login_failures(self, client: str, *, window_ms: int) -> tuple[int, int]:
        """Failed dashboard logins from `client` in the current window, and ms until it ends."""
        return await self._login_failures("read", client, window_ms)

    async def count_login_failure(self, client: str, *, window_ms: int) -> tuple[int, int]:
        """One more failed login from `client` (the first starts a window); the new count."""
        return await self._login_failures("count", client, window_ms)

    async def _login_failures(self, mode: str, client: str, window_ms: int) -> tuple[int, int]:
        keys = [self.keys.login_failures(client)]
        failures, left_ms = await self.run(LOGIN_FAILURES, keys, [mode, window_ms])
        return int(failures), int(left_ms)
