"""Actions ("user did X") recorded once per client id, in one script per request."""

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence

from app.engine.job_ids import evaluation_id
from app.storage.connections import Connection
from app.storage.keys import IDS_LIMIT, LOG_LENGTH, Keys, oldest_minute, recent_entry
from app.storage.records import NewAction, timeline_entry
from app.storage.scripts import RECORD_ACTIONS, ScriptRunner
from app.storage.wire import CommandArg

# Upstash refuses a request over 1 MB (its smallest plan's limit); stay well under it.
MAX_SCRIPT_PAYLOAD_BYTES = 512 * 1024
# Each action keeps its earliest occurred-at times up to the largest count a loop waits for, so
# the n-th action by time is exact; past this many (14 bytes each, read by every evaluation) a
# count's time is the latest action's when it was reached, an upper bound (record_actions.lua).
MAX_RANKED_TIMES = 1000


class Actions(ScriptRunner):
    """The actions aggregate: what users did, counted once per action id, in their hashes."""

    def __init__(self, conn: Connection, keys: Keys, *, action_dedupe_ttl_s: int) -> None:
        super().__init__(conn, keys)
        self.action_dedupe_ttl_s = action_dedupe_ttl_s

    async def record(
        self, actions: Sequence[NewAction], *, now_ms: int, tracked: Mapping[str, Iterable[int]]
    ) -> tuple[int, int]:
        """Record actions once per client id; returns (accepted, duplicates).

        One round trip, unless the batch is larger than one request may be (Upstash refuses
        requests over 1 MB): then one per `MAX_SCRIPT_PAYLOAD_BYTES` of it. On a cluster, one
        script per shard the batch's users live in, sent together (each touches one slot).
        """
        if not self.keys.sharded:
            return await self._record_shard(0, actions, now_ms, tracked)
        groups: dict[int, list[NewAction]] = {}
        for action in actions:
            groups.setdefault(self.keys.shard_of(action.user_id), []).append(action)
        counts = await asyncio.gather(
            *(self._record_shard(shard, group, now_ms, tracked) for shard, group in groups.items())
        )
        return sum(added for added, _ in counts), sum(repeated for _, repeated in counts)

    async def _record_shard(
        self,
        shard: int,
        actions: Sequence[NewAction],
        now_ms: int,
        tracked: Mapping[str, Iterable[int]],
    ) -> tuple[int, int]:
        accepted = duplicates = 0
        schedule = self.keys.shard(shard).schedule
        since = oldest_minute(now_ms, self.action_dedupe_ttl_s)
        for keys, args in self._action_chunks(actions, tracked, now_ms):
            header: list[CommandArg] = [now_ms, since, IDS_LIMIT, LOG_LENGTH]
            added, repeated = await self.run(RECORD_ACTIONS, [*keys, schedule], [*header, *args])
            accepted, duplicates = accepted + int(added), duplicates + int(repeated)
        return accepted, duplicates

    def _action_chunks(
        self, actions: Sequence[NewAction], tracked: Mapping[str, Iterable[int]], now_ms: int
    ) -> Iterator[tuple[list[str], list[CommandArg]]]:
        keys: list[str] = []
        args: list[CommandArg] = []
        size = 0
        for action in actions:
            action_keys = [self.keys.user(action.user_id)]
            action_args = self._action_args(action, tracked.get(action.action, ()), now_ms)
            action_size = sum(len(str(part)) for part in (*action_keys, *action_args))
            if keys and size + action_size > MAX_SCRIPT_PAYLOAD_BYTES:
                yield keys, args
                keys, args, size = [], [], 0
            keys, args, size = keys + action_keys, args + action_args, size + action_size
        if keys:
            yield keys, args

    def _action_args(
        self, action: NewAction, counts: Iterable[int], now_ms: int
    ) -> list[CommandArg]:
        ordered = sorted(counts)
        return [
            recent_entry(action.id, now_ms) if action.id else "",
            action.action,
            action.occurred_at_ms,
            min(ordered[-1], MAX_RANKED_TIMES) if ordered else 0,
            ",".join(str(count) for count in ordered),
            log_line(action),
            evaluation_id(action.user_id),
        ]


def log_line(action: NewAction) -> str:
    """An action's line in the user's log: only one with properties has one (its count and time
    are in the action's field; its properties nowhere else)."""
    if not action.properties:
        return ""
    details = {"action": action.action, "id": action.id, "properties": action.properties}
    return timeline_entry(action.occurred_at_ms, "action", **details)
