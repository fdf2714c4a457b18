"""Dashboard sessions logged out, kept in storage so every web process shares them (failed
logins are counted by `rates`)."""

from app.storage.scripts import ScriptRunner


class Logins(ScriptRunner):
    """Revoked dashboard sessions, each kept until it would have expired."""

    async def revoke_session(self, session_id: str, *, ttl_ms: int) -> None:
        """A dashboard session logged out: refused from now until it would have expired."""
        key = self.keys.session_revoked(session_id)
        await self.conn.call("SET", key, "1", "PX", max(ttl_ms, 1))

    async def session_revoked(self, session_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.session_revoked(session_id)))
