"""The schema's version, and the move from v1 (a key per aggregate) to v2 (one hash per user).

`P:schema` says which schema the data is in. A store that has none is new (it gets `2`) unless it
holds v1 data: then the service refuses it (every call answers `StorageUnavailable`, so webhooks
answer 503 and Svix retries them) until `activation migrate` moved it. The move is per user, each
user in one script (their v2 hash written, their v1 keys deleted), then the schedule, then the
counters; it can be stopped and run again. Run it with every worker stopped.

v1's keys, for the move only (`P` the prefix; on a cluster `P{<tag>}:u:<uid>:...` and
`P{<tag>}:schedule`...): `P{<uid>}:user` (hash: profile, version, registered_at,
unsubscribed_at, suppressed_at, suppression), `:tombstone` (string: ms), `:webhook:<svix-id>` and
`:action:<id>` (markers: ms), `:activity` (hash: rev, n:/first:/last:/ts:<a>, at:<a>:<n>),
`:loops` (hash: step states), `:jobs` (hash: job id -> EmailJob JSON), `:attempts` (hash: <id>
started attempts, <id>@ last start, <id>^ first that may have reached Resend), `:timeline`
(list, newest first); shared `P:schedule` (eval and email members), `P:leases`,
`P:lease_tokens`, `P:lease_seq`, and `P:stats:<loop>` with `met`, `sent`, `nudged`,
`emails_sent` among its counters.
"""

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.email_jobs import EmailJob, JobStatus
from app.engine.evaluate import StepState
from app.engine.job_ids import evaluation_id, is_batch, is_evaluation, user_of
from app.errors import SchemaRefused, StorageUnavailable
from app.storage import keys as k
from app.storage.connections import ClusterConnection, Connection
from app.storage.keys import IDS_LIMIT, LOG_LENGTH, SCHEMA_VERSION, SEEN_LIMIT, Keys, ShardKeys
from app.storage.queue import scored
from app.storage.records import UserProfile, encode_job, encode_step
from app.storage.redis_client import CommandArg
from app.storage.scripts import MIGRATE_STATS, MIGRATE_USER, ScriptRunner

logger = logging.getLogger(__name__)

V1_SHARED = ("leases", "lease_tokens", "lease_seq")
V1_USER_KEYS = ("user", "tombstone", "activity", "loops", "jobs", "attempts", "timeline")
V1_MARKERS = ("webhook", "action")
# v1 timeline lines a v2 field does not say already (the rest is rebuilt from the fields)
V1_USER_FIELDS = (
    ("version", k.VERSION),
    ("registered_at", k.REGISTERED),
    ("unsubscribed_at", k.UNSUBSCRIBED),
    ("suppressed_at", k.SUPPRESSED),
    ("suppression", k.SUPPRESSION),
)
DERIVED_EVENTS = frozenset(
    {"user.created", "unsubscribed", "suppressed", "email.sent", "email.failed", "email.dropped"}
)
PAGE = 1000


class RefusingConnection:
    """Stands for a connection to data in another schema: every call is refused."""

    def __init__(self, inner: Connection, reason: str) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.scripts = inner.scripts
        self.reason = reason

    async def call(self, *command: CommandArg) -> Any:
        raise StorageUnavailable(self.reason)

    async def close(self) -> None:
        await self.inner.close()


async def ensure_schema(conn: Connection, keys: Keys) -> None:
    """Pass when the data is in this schema (a new store is marked so); else `SchemaRefused`."""
    version = await conn.call("GET", keys.schema)
    if version is None and await holds_v1(conn, keys):
        raise SchemaRefused(
            f"storage holds data of schema v1 (no {keys.schema}): stop the workers, run "
            "`activation migrate`, then start this version"
        )
    if version is None:
        await conn.call("SET", keys.schema, SCHEMA_VERSION, "NX")
        version = await conn.call("GET", keys.schema)
    if str(version) != SCHEMA_VERSION:
        raise SchemaRefused(f"storage is in schema {version!r}; this version uses {SCHEMA_VERSION}")


async def holds_v1(conn: Connection, keys: Keys) -> bool:
    """v1's shared keys (a worker ever claimed), or a turn of a user with v1 keys scheduled."""
    for shard in keys.shards():
        if int(await conn.call("EXISTS", *(shard.scope + name for name in V1_SHARED))):
            return True
        first = await conn.call("ZRANGE", shard.schedule, 0, 0)
        if first and not (is_evaluation(str(first[0])) or is_batch(str(first[0]))):
            return True
        if first:
            uid = user_of(str(first[0]))
            if int(await conn.call("EXISTS", *V1Keys(keys).all_fixed(uid))):
                return True
    return False


@dataclass(frozen=True, slots=True)
class V1Keys:
    """v1's key names, for reading them once."""

    keys: Keys

    def scope(self, user_id: str) -> str:
        if not self.keys.sharded:
            return f"{self.keys.prefix}{{{user_id}}}:"
        return f"{self.keys.user(user_id)}:"

    def key(self, user_id: str, name: str) -> str:
        return self.scope(user_id) + name

    def all_fixed(self, user_id: str) -> list[str]:
        return [self.key(user_id, name) for name in V1_USER_KEYS]

    def patterns(self) -> list[str]:
        """SCAN patterns matching every v1 per-user key (and no v2 hash: those have no `:...`)."""
        if not self.keys.sharded:
            return [f"{_glob(self.keys.prefix)}{{*}}:*"]
        return [f"{_glob(s.scope)}u:*:*" for s in self.keys.shards()]

    def user_of(self, key: str) -> tuple[str, str] | None:
        """(user id, the rest: `user`, `webhook:<id>`...) of a v1 per-user key."""
        if not self.keys.sharded:
            head = f"{self.keys.prefix}{{"
            uid, close, rest = key.removeprefix(head).partition("}:")
            return (uid, rest) if key.startswith(head) and close else None
        for shard in self.keys.shards():
            head = f"{shard.scope}u:"
            if key.startswith(head):
                return _split_cluster(key.removeprefix(head))
        return None


def _split_cluster(tail: str) -> tuple[str, str] | None:
    """`<uid>:<rest>` when the user id may hold `:`: the rest is a known v1 name."""
    for name in V1_USER_KEYS:
        if tail.endswith(f":{name}"):
            return tail[: -len(name) - 1], name
    for marker in V1_MARKERS:
        uid, found, rest = tail.partition(f":{marker}:")
        if found:
            return uid, f"{marker}:{rest}"
    return None


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


@dataclass
class Migrated:
    """What `migrate` moved."""

    users: int = 0
    jobs: int = 0
    turns: int = 0
    counters: int = 0
    already: bool = False
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.already:
            return f"storage is already in schema {SCHEMA_VERSION}: nothing to do"
        return (
            f"migrated {self.users} user(s) with {self.jobs} email job(s), {self.turns} turn(s) "
            f"on the schedule and {self.counters} loop counter hash(es) to schema "
            f"{SCHEMA_VERSION}" + (f"; skipped: {', '.join(self.skipped)}" if self.skipped else "")
        )


class Migration(ScriptRunner):
    """Moves v1 data to v2 (see the module docstring); `move()` returns what it moved."""

    async def move(self, now_ms: int) -> Migrated:
        report = Migrated()
        if str(await self.conn.call("GET", self.keys.schema)) == SCHEMA_VERSION:
            return Migrated(already=True)
        names = V1Keys(self.keys)
        users: dict[str, list[str]] = {}
        async for key in self._scan(names.patterns()):
            parsed = names.user_of(key)
            if parsed is not None and parsed[0] and k.valid_user_id(parsed[0]):
                users.setdefault(parsed[0], []).append(parsed[1])
        for uid, present in sorted(users.items()):
            jobs = await self._user(uid, present, names)
            if jobs is None:
                report.skipped.append(uid)
                continue
            report.users, report.jobs = report.users + 1, report.jobs + jobs
        for shard in self.keys.shards():
            report.turns += await self._schedule(shard, now_ms)
            report.counters += await self._counters(shard)
        await self.conn.call("SET", self.keys.schema, SCHEMA_VERSION)
        return report

    async def _scan(self, patterns: Sequence[str]) -> AsyncIterator[str]:
        for pattern in patterns:
            if isinstance(self.conn, ClusterConnection):
                async for key in self.conn.client.scan_iter(match=pattern, count=PAGE):
                    yield str(key)
                continue
            cursor = "0"
            while True:
                scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", PAGE)
                cursor, found = await self.conn.call(*scan)
                for key in found:
                    yield str(key)
                if str(cursor) == "0":
                    break

    async def _user(self, uid: str, present: Sequence[str], names: V1Keys) -> int | None:
        """One user moved in one script: their v2 fields written (none a v2 write made since is
        overwritten), their v1 keys deleted. Returns how many jobs they had."""
        old = {name: await self._read(names.key(uid, name)) for name in present}
        try:
            fields = v2_fields(uid, old)
        except (ValueError, KeyError, TypeError) as exc:  # data no v1 version wrote: left alone
            logger.warning("user %s not migrated: %s", uid, exc)
            return None
        keys = [self.keys.user(uid), *(names.key(uid, name) for name in present)]
        await self.run(MIGRATE_USER, keys, migrate_user_args(fields))
        return sum(1 for name in fields if name.startswith(k.JOB))

    async def _read(self, key: str) -> Any:
        kind = str(await self.conn.call("TYPE", key))
        if kind == "hash":
            reply = await self.conn.call("HGETALL", key)
            if isinstance(reply, Mapping):
                return {str(a): str(b) for a, b in reply.items()}
            return dict(zip(reply[::2], reply[1::2], strict=True))
        if kind == "list":
            return [str(line) for line in await self.conn.call("LRANGE", key, 0, -1)]
        value = await self.conn.call("GET", key)
        return None if value is None else str(value)

    async def _schedule(self, shard: ShardKeys, now_ms: int) -> int:
        """v1's email members become their user's turn (at the soonest of its due times); a
        leased job's turn comes now; the lease keys go."""
        turns: dict[str, int] = {}
        gone: list[str] = []
        for zset, leased in ((shard.schedule, False), (shard.scope + "leases", True)):
            start = 0
            while page := await self.conn.call(
                "ZRANGE", zset, start, start + PAGE - 1, "WITHSCORES"
            ):
                for member, score in scored(page):
                    uid = user_of(member)
                    at = now_ms if leased else score
                    turns[uid] = min(turns.get(uid, at), at)
                    if not is_evaluation(member):
                        gone.append(member)
                start += PAGE
        for i in range(0, len(gone), PAGE):
            await self.conn.call("ZREM", shard.schedule, *gone[i : i + PAGE])
        pairs: list[CommandArg] = []
        for uid, at in turns.items():
            pairs += [at, evaluation_id(uid)]
        for i in range(0, len(pairs), 2 * PAGE):
            await self.conn.call("ZADD", shard.schedule, "LT", *pairs[i : i + 2 * PAGE])
        await self.conn.call("DEL", *(shard.scope + name for name in V1_SHARED))
        return len(turns)

    async def _counters(self, shard: ShardKeys) -> int:
        moved = 0
        async for key in self._scan([f"{_glob(shard.scope)}stats:*"]):
            moved += int(await self.run(MIGRATE_STATS, [key], migrate_stats_args()))
        return moved


# --- the scripts' arguments -------------------------------------------------------------------


def migrate_user_args(fields: Mapping[str, str]) -> list[CommandArg]:
    """migrate_user.lua's ARGV: the v2 hash's field/value pairs, flat."""
    return [item for pair in fields.items() for item in pair]


def migrate_stats_args() -> list[CommandArg]:
    """migrate_stats.lua takes no ARGV: its one key says everything."""
    return []


# --- v1 fields to v2 fields ---------------------------------------------------------------------


def v2_fields(uid: str, old: Mapping[str, Any]) -> dict[str, str]:
    """A user's v2 hash from their v1 keys (`old`: name -> value as read)."""
    fields: dict[str, str] = {}
    user = old.get("user") or {}
    if user.get("profile"):
        fields[k.PROFILE] = UserProfile.model_validate_json(user["profile"]).stored()
    for v1, v2 in V1_USER_FIELDS:
        if user.get(v1) is not None:
            fields[v2] = user[v1]
    activity = old.get("activity") or {}
    fields[k.REV] = str(int(activity.get("rev", "0")) + 1)
    fields |= {k.action_field(a): value for a, value in v2_actions(activity).items()}
    for name, raw in (old.get("loops") or {}).items():
        fields[k.step_field(name)] = encode_step(StepState.model_validate_json(raw))
    timeline = [json.loads(line) for line in old.get("timeline") or []]
    attempts = old.get("attempts") or {}
    for job_id, raw in (old.get("jobs") or {}).items():
        job = v2_job(EmailJob.model_validate_json(raw), attempts, timeline)
        fields[k.job_field(job_id)] = encode_job(job)
    log = [json.dumps(e, separators=(",", ":")) for e in timeline if kept_in_log(e)]
    if log:
        fields[k.LOG] = "".join(line + "\n" for line in log[:LOG_LENGTH])
    fields |= recent_fields(old)
    if old.get("tombstone") is not None:
        return {k.DELETED: str(old["tombstone"]), **_only(fields, k.SEEN)}
    return fields


def v2_actions(activity: Mapping[str, str]) -> dict[str, str]:
    """`n:<a>`, `first:<a>`, `last:<a>`, `ts:<a>`, `at:<a>:<n>` as one `a:<a>` value each."""
    out = {}
    for name, count in activity.items():
        if not name.startswith("n:"):
            continue
        action = name[2:]
        bounds = [
            f"{field_name.rpartition(':')[2]}={value}"
            for field_name, value in activity.items()
            if field_name.startswith(f"at:{action}:")
        ]
        first = int(activity[f"first:{action}"])
        value = f"{count},{first},{activity[f'last:{action}']}"
        times = [int(at) for at in activity.get(f"ts:{action}", "").split(",") if at]
        ranked = ",".join(str(at - first) for at in times)  # offsets from the first
        if ranked or bounds:
            value += f";{ranked}"
        if bounds:
            value += ";" + ",".join(bounds)
        out[action] = value
    return out


def v2_job(
    job: EmailJob, attempts: Mapping[str, str], timeline: Sequence[Mapping[str, Any]]
) -> EmailJob:
    """A v1 job with its attempts (v1's `attempts` hash) and, once ended, when (its line)."""
    update: dict[str, Any] = {}
    started = int(attempts.get(job.id, "0"))
    if job.status is JobStatus.QUEUED and started:
        update |= {"attempts": started, "seq": started}
        first = attempts.get(f"{job.id}^")
        update["first_attempt_at"] = int(first) if first is not None else None
    if job.status in (JobStatus.FAILED, JobStatus.DROPPED):
        event = f"email.{job.status.value}"
        ends = [e["at"] for e in timeline if e.get("event") == event and e.get("email") == job.id]
        update["ended_at"] = max(ends) if ends else None
    return job.model_copy(update=update)


def kept_in_log(entry: Mapping[str, Any]) -> bool:
    """What a v1 timeline line says that no v2 field does."""
    event = str(entry.get("event"))
    if event == "action":
        return bool(entry.get("properties"))
    # v2 keeps no line for a retry (`email.queued`): the job says how many attempts were made
    return not (event in DERIVED_EVENTS or event == "email.queued" or event.startswith("step."))


def recent_fields(old: Mapping[str, Any]) -> dict[str, str]:
    """v1's delivery and action-id markers (each holds when it was set) as `seen` and `ids`."""
    out = {}
    for marker, name, limit in (("webhook:", k.SEEN, SEEN_LIMIT), ("action:", k.IDS, IDS_LIMIT)):
        entries = sorted(
            (int(value), key.removeprefix(marker))
            for key, value in old.items()
            if key.startswith(marker) and value is not None
        )
        if entries:
            out[name] = "".join(k.recent_entry(i, at) for at, i in entries[-limit:])
    return out


def _only(fields: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: fields[name] for name in names if name in fields}
