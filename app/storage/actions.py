"""Actions ("user did X") recorded once per client id, in one script per request."""

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence

from app.engine.filters import Filter
from app.engine.job_ids import evaluation_id
from app.engine.loops import MAX_RANKED_TIMES  # how many earliest times an action keeps
from app.storage.connections import Connection
from app.storage.keys import IDS_LIMIT, LOG_LENGTH, Keys, oldest_minute, recent_entry
from app.storage.records import NewAction, timeline_entry
from app.storage.redis_client import CommandArg
from app.storage.scripts import RECORD_ACTIONS, ScriptRunner

# Upstash refuses a request over 1 MB (its smallest plan's limit); stay well under it.
MAX_SCRIPT_PAYLOAD_BYTES = 512 * 1024


class Actions(ScriptRunner):
    """The actions aggregate: what users did, counted once per action id, in their hashes."""

    def __init__(self, conn: Connection, keys: Keys, *, action_dedupe_ttl_s: int) -> None:
        super().__init__(conn, keys)
        self.action_dedupe_ttl_s = action_dedupe_ttl_s

    async def record(
        self,
        actions: Sequence[NewAction],
        *,
        now_ms: int,
        tracked: Mapping[str, Iterable[int]],
        filters: Mapping[str, Mapping[str, Filter]] | None = None,
    ) -> tuple[int, int]:
        """Record actions once per client id; returns (accepted, duplicates).

        `tracked`: the counts loops wait for, by counted name; `filters`: per action, the
        filters loops count it by (`evaluate.watched_filters`): an action whose properties match
        one is also counted under that filter's name (`loops.counted_name`), as it arrives.

        One round trip, unless the batch is larger than one request may be (Upstash refuses
        requests over 1 MB): then one per `MAX_SCRIPT_PAYLOAD_BYTES` of it. On a cluster, one
        script per shard the batch's users live in, sent together (each touches one slot).
        """
        watch = _Watch(tracked, filters or {})
        if not self.keys.sharded:
            return await self._record_shard(0, actions, now_ms, watch)
        groups: dict[int, list[NewAction]] = {}
        for action in actions:
            groups.setdefault(self.keys.shard_of(action.user_id), []).append(action)
        counts = await asyncio.gather(
            *(self._record_shard(shard, group, now_ms, watch) for shard, group in groups.items())
        )
        return sum(added for added, _ in counts), sum(repeated for _, repeated in counts)

    async def _record_shard(
        self,
        shard: int,
        actions: Sequence[NewAction],
        now_ms: int,
        watch: "_Watch",
    ) -> tuple[int, int]:
        accepted = duplicates = 0
        shard_keys = self.keys.shard(shard)
        since = oldest_minute(now_ms, self.action_dedupe_ttl_s)
        for keys, args in self._action_chunks(actions, watch, now_ms):
            script_args = record_actions_args(now_ms=now_ms, since_minute=since, actions=args)
            added, repeated = await self.run(
                RECORD_ACTIONS, [*keys, shard_keys.schedule], script_args
            )
            accepted, duplicates = accepted + int(added), duplicates + int(repeated)
        return accepted, duplicates

    def _action_chunks(
        self, actions: Sequence[NewAction], watch: "_Watch", now_ms: int
    ) -> Iterator[tuple[list[str], list[CommandArg]]]:
        keys: list[str] = []
        args: list[CommandArg] = []
        size = 0
        for action in actions:
            action_keys = [self.keys.user(action.user_id)]
            action_args = action_args_of(action, watch, now_ms)
            action_size = sum(len(str(part)) for part in (*action_keys, *action_args))
            if keys and size + action_size > MAX_SCRIPT_PAYLOAD_BYTES:
                yield keys, args
                keys, args, size = [], [], 0
            keys, args, size = keys + action_keys, args + action_args, size + action_size
        if keys:
            yield keys, args


# --- the script's arguments, in the order its header gives ---------------------------------------


def record_actions_args(
    *, now_ms: int, since_minute: int, actions: Sequence[CommandArg]
) -> list[CommandArg]:
    """record_actions.lua's ARGV: `actions` the 8 per action of `action_args_of`, flat."""
    return [now_ms, since_minute, IDS_LIMIT, LOG_LENGTH, *actions]


def action_args_of(action: NewAction, watch: "_Watch", now_ms: int) -> list[CommandArg]:
    """One action's 8 arguments of record_actions.lua."""
    keep, counts = watch.counts(action.action)
    return [
        recent_entry(action.id, now_ms) if action.id else "",
        action.action,
        action.occurred_at_ms,
        keep,
        counts,
        log_line(action),
        evaluation_id(action.user_id),
        watch.filtered(action),
    ]


class _Watch:
    """What loops watch of an action, in the script's terms (cached per counted name)."""

    def __init__(
        self, tracked: Mapping[str, Iterable[int]], filters: Mapping[str, Mapping[str, Filter]]
    ) -> None:
        self.tracked = tracked
        self.filters = filters
        self._counts: dict[str, tuple[int, str]] = {}

    def counts(self, name: str) -> tuple[int, str]:
        """How many earliest times to keep, and the counts loops wait for ("1,10")."""
        found = self._counts.get(name)
        if found is None:
            ordered = sorted(self.tracked.get(name, ()))
            keep = min(ordered[-1], MAX_RANKED_TIMES) if ordered else 0
            found = self._counts[name] = (keep, ",".join(str(count) for count in ordered))
        return found

    def filtered(self, action: NewAction) -> str:
        """The filtered counts the action's properties match: `<name>/<keep>/<counts> ...`."""
        filters = self.filters.get(action.action)
        if not filters:
            return ""
        matched = []
        for name, where in filters.items():
            if where.matches(action.properties):
                keep, counts = self.counts(name)
                matched.append(f"{name}/{keep}/{counts}")
        return " ".join(matched)


def log_line(action: NewAction) -> str:
    """An action's line in the user's log: only one with properties has one (its count and time
    are in the action's field; its properties nowhere else)."""
    if not action.properties:
        return ""
    details = {"action": action.action, "id": action.id, "properties": action.properties}
    return timeline_entry(action.occurred_at_ms, "action", **details)
