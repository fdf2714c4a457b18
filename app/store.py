"""The storage layer: typed domain methods over one `Connection`, each one round trip.

Every read-decide-write is one Lua script from `app/lua/` (EVALSHA, EVAL when the server does not
know it yet), so the three transports behave the same and each request costs one round trip.
"""

import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from app.connections import CommandArg, Connection, NoScript
from app.errors import StorageError
from app.keys import Keys
from app.users import UserProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script from `app/lua/<name>.lua`, with its SHA1 for EVALSHA."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> "Script":
        source = resources.files("app").joinpath("lua", f"{name}.lua").read_text("utf-8")
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


RECORD_USER = Script.load("record_user")
DELETE_USER = Script.load("delete_user")


class UserWrite(StrEnum):
    """What a Clerk user event did to storage (the scripts' one-word answers)."""

    CREATED = "created"
    UPDATED = "updated"
    STALE = "stale"
    DELETED = "deleted"
    TOMBSTONED = "tombstoned"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class StoredUser:
    profile: UserProfile
    version_ms: int
    registered_at_ms: int | None


class Store:
    """Typed access to everything the service keeps in Redis."""

    def __init__(self, conn: Connection, keys: Keys, *, webhook_dedupe_ttl_s: int) -> None:
        self.conn = conn
        self.keys = keys
        self.webhook_dedupe_ttl_s = webhook_dedupe_ttl_s

    def __repr__(self) -> str:
        return f"Store(kind={self.conn.kind.value}, prefix={self.keys.prefix!r})"

    async def run(self, script: Script, keys: list[str], args: list[CommandArg]) -> Any:
        """Run a script in one round trip; the first run on a fresh server costs a second."""
        try:
            return await self.conn.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScript:
            logger.info("loading script %s into the server", script.name)
            return await self.conn.call("EVAL", script.source, len(keys), *keys, *args)

    async def ping(self) -> None:
        await self.conn.call("PING")

    async def close(self) -> None:
        await self.conn.close()

    async def record_user(
        self, delivery_id: str, profile: UserProfile, *, created: bool, version_ms: int, now_ms: int
    ) -> UserWrite:
        """Store the profile of `user.created` (created=True) or `user.updated`, once."""
        keys = [
            self.keys.user(profile.id),
            self.keys.tombstone(profile.id),
            self.keys.webhook_seen(profile.id, delivery_id),
        ]
        kind = "created" if created else "updated"
        args: list[CommandArg] = [
            profile.model_dump_json(),
            version_ms,
            kind,
            now_ms,
            self.webhook_dedupe_ttl_s,
        ]
        return _as_write(RECORD_USER, await self.run(RECORD_USER, keys, args))

    async def delete_user(self, delivery_id: str, user_id: str, *, now_ms: int) -> UserWrite:
        """Remove the user's personal data and leave a tombstone, once per delivery."""
        keys = [
            self.keys.tombstone(user_id),
            self.keys.webhook_seen(user_id, delivery_id),
            *self.keys.personal(user_id),
        ]
        reply = await self.run(DELETE_USER, keys, [now_ms, self.webhook_dedupe_ttl_s])
        return _as_write(DELETE_USER, reply)

    async def get_user(self, user_id: str) -> StoredUser | None:
        fields = ("profile", "version", "registered_at")
        reply = await self.conn.call("HMGET", self.keys.user(user_id), *fields)
        profile, version, registered_at = reply
        if profile is None:
            return None
        return StoredUser(
            profile=UserProfile.model_validate_json(profile),
            version_ms=int(version),
            registered_at_ms=int(registered_at) if registered_at is not None else None,
        )

    async def is_deleted(self, user_id: str) -> bool:
        return bool(await self.conn.call("EXISTS", self.keys.tombstone(user_id)))


def _as_write(script: Script, reply: object) -> UserWrite:
    try:
        return UserWrite(str(reply))
    except ValueError:
        raise StorageError(f"script {script.name} answered {reply!r}") from None
