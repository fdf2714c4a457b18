"""The Lua scripts (`app/storage/lua/`, loaded once) and what runs them: every read-decide-write
is one script, EVALSHA first and EVAL when the server does not know it yet, so the three
transports behave the same and each request costs one round trip."""

import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, TypeVar

from app.errors import NoScript, StorageError
from app.storage.connections import Connection
from app.storage.keys import Keys
from app.storage.redis_client import CommandArg

logger = logging.getLogger(__name__)

AnswerT = TypeVar("AnswerT", bound=StrEnum)


# Upstash takes a lock on the whole database for a script unless its shebang allows it to lock
# only the keys in KEYS (every script here declares all it touches). Real Redis refuses the flag,
# so only the Upstash transport sends this variant, until a server refuses it
# (`connections.ScriptFlags`: a local Upstash-compatible server in front of a stock Redis).
KEY_LOCKING_SHEBANG = "#!lua flags=allow-key-locking\n"


def sha1(source: str) -> str:
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script from `app/storage/lua/<name>.lua`, with its SHA1 for EVALSHA, and the
    variant Upstash runs with per-key locks."""

    name: str
    source: str
    sha: str
    key_locking_source: str
    key_locking_sha: str

    @classmethod
    def load(cls, name: str, *, lib: bool = True) -> "Script":
        """`lib`: the helpers of `lua/lib.lua` come first (most scripts use a few)."""
        source = _lua(name)
        if lib:
            source = f"{_lua('lib')}\n{source}"
        flagged = KEY_LOCKING_SHEBANG + source
        return cls(name, source, sha1(source), flagged, sha1(flagged))


def _lua(name: str) -> str:
    return resources.files("app.storage").joinpath("lua", f"{name}.lua").read_text("utf-8")


RECORD_USER = Script.load("record_user")
DELETE_USER = Script.load("delete_user")
RECORD_ACTIONS = Script.load("record_actions")
APPLY = Script.load("apply")
CLAIM = Script.load("claim")
RENEW = Script.load("renew")
SETTLE = Script.load("settle")
BATCH_RECORD = Script.load("batch_record")
BATCH_CHECK = Script.load("batch_check")
BATCH_END = Script.load("batch_end")
UNSUBSCRIBE = Script.load("unsubscribe")
RETRY_DEAD = Script.load("retry_dead")
EMAIL_EVENT = Script.load("email_event")
UNSUPPRESS = Script.load("unsuppress")
MIGRATE_USER = Script.load("migrate_user")
MIGRATE_STATS = Script.load("migrate_stats", lib=False)
STATS = Script.load("stats", lib=False)
FIXED_WINDOW = Script.load("fixed_window", lib=False)
SIGHTINGS = Script.load("sightings")
SIGHTINGS_READ = Script.load("sightings_read")


class ScriptRunner:
    """Runs the scripts over one connection with the key schema: what every aggregate of the
    store (users, actions, the queue, reads, logins) is built on."""

    def __init__(self, conn: Connection, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys

    async def run(self, script: Script, keys: list[str], args: list[CommandArg]) -> Any:
        """Run a script in one round trip; the first run on a fresh server costs a second."""
        flagged = self.conn.scripts.key_locking
        sha = script.key_locking_sha if flagged else script.sha
        source = script.key_locking_source if flagged else script.source
        try:
            return await self.conn.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScript:
            logger.info("loading script %s into the server", script.name)
        try:
            return await self.conn.call("EVAL", source, len(keys), *keys, *args)
        except StorageError as exc:
            if not (flagged and refuses_key_locking(exc)):
                raise
            self.conn.scripts.refused_key_locking(str(exc))
        return await self.run(script, keys, args)


def refuses_key_locking(error: StorageError) -> bool:
    """Redis's refusal of a shebang flag it does not know (`ERR Unexpected flag in script
    shebang: allow-key-locking`), however a server in front of it wraps the text."""
    text = str(error)
    return "allow-key-locking" in text or "shebang" in text.lower()


def as_enum(kind: type[AnswerT], script: Script, reply: object) -> AnswerT:
    """A script's one-word answer as its enum; anything else is a bug: StorageError."""
    try:
        return kind(str(reply))
    except ValueError:
        raise StorageError(f"script {script.name} answered {reply!r}") from None


def int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))
