"""Where the data lives: one Redis (or Upstash), or a Redis Cluster found from any one node.

On one Redis every key stays where it always was (`P{<uid>}:...`, `P:schedule`...): one shard.
On a cluster every script must touch one hash slot, so what users share (the schedule, leases,
dead letters, the outbox, counters) is split into shards, each under a hash tag of its own, and a
user's keys carry their shard's tag: a user's writes and their jobs' place on the schedule stay
in one slot. There is one shard per master when the layout is first chosen, each tag picked so
it lands on a different master; the tags are then kept in Redis (`P:layout`) so every process,
and every later start, uses the same ones (a user's keys must not move).
"""

import json
import logging

from redis.asyncio.cluster import RedisCluster

from app.errors import ConfigError
from app.storage.connections import ClusterConnection, Connection, RedisConnection
from app.storage.keys import Keys

logger = logging.getLogger(__name__)

TAG_SEARCH_LIMIT = 100_000  # candidate tags `s0`, `s1`... tried to find one per master


async def open_layout(conn: Connection, keys: Keys, timeout_s: float) -> tuple[Connection, Keys]:
    """The connection and keys to use: unchanged on one Redis; on a cluster node, a
    `ClusterConnection` and the keys of the cluster's shards (chosen once, then read)."""
    if not isinstance(conn, RedisConnection) or not await conn.cluster_enabled():
        return conn, keys
    cluster = ClusterConnection.from_url(conn.url, timeout_s)
    await conn.close()
    await cluster.client.initialize()
    tags = await cluster_tags(cluster, keys)
    logger.info("Redis Cluster: %d shard(s), hash tags %s", len(tags), ", ".join(tags))
    return cluster, Keys(keys.prefix, tags)


async def cluster_tags(cluster: ClusterConnection, keys: Keys) -> tuple[str, ...]:
    """The shard tags kept in `P:layout`, or, on a first start, one per master (kept then)."""
    kept = await cluster.call("GET", keys.layout)
    if kept is None:
        chosen = json.dumps({"shards": list(tags_per_master(cluster.client))})
        await cluster.call("SET", keys.layout, chosen, "NX")  # another process may be first
        kept = await cluster.call("GET", keys.layout)
    tags = tuple(json.loads(str(kept))["shards"])
    if not tags:
        raise ConfigError(f"{keys.layout} holds no shards: {kept!r}")
    return tags


def tags_per_master(client: RedisCluster) -> tuple[str, ...]:
    """For each master (in address order), the first tag `s<n>` whose slot it serves."""
    masters = sorted(client.get_primaries(), key=lambda node: node.name)
    found: dict[str, str] = {}
    for n in range(TAG_SEARCH_LIMIT):
        tag = f"s{n}"
        owner = client.get_node_from_key(f"{{{tag}}}")
        if owner is not None and owner.name not in found:
            found[owner.name] = tag
            if len(found) == len(masters):
                break
    return tuple(found[node.name] for node in masters if node.name in found)
