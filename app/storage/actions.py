"""Actions ("user did X") recorded once per client id, in one script per request."""

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence

from app.engine.job_ids import evaluation_id
from app.storage.connections import Connection
from app.storage.keys import TIMELINE_LENGTH, Keys
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
    """The actions aggregate: a user's activity, counted once per action id."""

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
        for keys, args in self._action_chunks(actions, tracked):
            header: list[CommandArg] = [now_ms, self.action_dedupe_ttl_s, TIMELINE_LENGTH]
            added, repeated = await self.run(RECORD_ACTIONS, [*keys, schedule], [*header, *args])
            accepted, duplicates = accepted + int(added), duplicates + int(repeated)
        return accepted, duplicates

    def _action_chunks(
        self, actions: Sequence[NewAction], tracked: Mapping[str, Iterable[int]]
    ) -> Iterator[tuple[list[str], list[CommandArg]]]:
        keys: list[str] = []
        args: list[CommandArg] = []
        size = 0
        for action in actions:
            action_keys = self._action_keys(action)
            action_args = self._action_args(action, tracked.get(action.action, ()))
            action_size = sum(len(str(part)) for part in (*action_keys, *action_args))
            if keys and size + action_size > MAX_SCRIPT_PAYLOAD_BYTES:
                yield keys, args
                keys, args, size = [], [], 0
            keys, args, size = keys + action_keys, args + action_args, size + action_size
        if keys:
            yield keys, args

    def _action_keys(self, action: NewAction) -> list[str]:
        uid = action.user_id
        marker = self.keys.action_seen(uid, action.id) if action.id else self.keys.activity(uid)
        return [marker, self.keys.tombstone(uid), self.keys.activity(uid), self.keys.timeline(uid)]

    def _action_args(self, action: NewAction, counts: Iterable[int]) -> list[CommandArg]:
        details = {"action": action.action, "id": action.id, "properties": action.properties or {}}
        entry = timeline_entry(action.occurred_at_ms, "action", **details)
        ordered = sorted(counts)
        return [
            "1" if action.id else "0",
            action.action,
            action.occurred_at_ms,
            min(ordered[-1], MAX_RANKED_TIMES) if ordered else 0,
            ",".join(str(count) for count in ordered),
            entry,
            evaluation_id(action.user_id),
        ]
