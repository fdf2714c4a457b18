"""The store: every aggregate the service keeps in Redis, over one connection and one key schema.

`store.users` (profiles, deletions, unsubscribes, suppressions), `store.actions` (what users did),
`store.queue` (the schedule, leases, attempts, dead letters), `store.batches` (batches of emails
recorded before their request), `store.queries` (snapshots, counters,
the outbox), `store.logins` (dashboard sessions and login failures), `store.rates` (browsers'
rate limits) and `store.sightings` (the actions reported, for their health). Each call is one
round trip; only this package talks to Redis.
"""

from app.errors import SchemaRefused
from app.storage.action_sightings import Sightings
from app.storage.actions import Actions
from app.storage.batches import Batches
from app.storage.cluster_shards import open_layout
from app.storage.connections import Connection
from app.storage.keys import Keys
from app.storage.logins import Logins
from app.storage.migrate import Migrated, Migration, RefusingConnection, ensure_schema
from app.storage.queries import Queries
from app.storage.queue import Queue
from app.storage.rates import Rates
from app.storage.users import Users

ACTION_DEDUPE_TTL_S = 7 * 24 * 3600


class Store:
    """The aggregates, sharing one connection; `close()` closes it."""

    def __init__(
        self,
        conn: Connection,
        keys: Keys,
        *,
        webhook_dedupe_ttl_s: int,
        action_dedupe_ttl_s: int = ACTION_DEDUPE_TTL_S,
        timeout_s: float = 2.0,
    ) -> None:
        self.webhook_dedupe_ttl_s = webhook_dedupe_ttl_s
        self.action_dedupe_ttl_s = action_dedupe_ttl_s
        self.timeout_s = timeout_s
        self._opened: tuple[Connection, Keys] | None = None
        self._build(conn, keys)

    def _build(self, conn: Connection, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys
        self.users = Users(conn, keys, webhook_dedupe_ttl_s=self.webhook_dedupe_ttl_s)
        self.actions = Actions(conn, keys, action_dedupe_ttl_s=self.action_dedupe_ttl_s)
        self.queue = Queue(conn, keys)
        self.batches = Batches(conn, keys)
        self.queries = Queries(conn, keys)
        self.logins = Logins(conn, keys)
        self.rates = Rates(conn, keys)
        self.sightings = Sightings(conn, keys)

    def __repr__(self) -> str:
        return (
            f"Store(kind={self.conn.kind.value}, prefix={self.keys.prefix!r}, "
            f"shards={self.keys.shard_count})"
        )

    async def open(self) -> None:
        """Find out what the connection reaches: on a node of a Redis Cluster, the cluster and
        its shards (`storage.cluster_shards`); elsewhere nothing changes. Then check the data is
        in this schema (`storage.migrate`): data in an older one is refused, every call answering
        `StorageUnavailable`, until `activation migrate` moved it. Call before any use; when
        storage cannot be reached yet, or is refused, `StorageUnavailable` (call again later)."""
        if self._opened is None:
            self._opened = await open_layout(self.conn, self.keys, self.timeout_s)
        conn, keys = self._opened
        try:
            await ensure_schema(conn, keys)
        except SchemaRefused as exc:
            self._build(RefusingConnection(conn, str(exc)), keys)
            raise
        self._build(conn, keys)

    async def migrate(self, now_ms: int) -> Migrated:
        """Move data of an older schema to this one (`storage.migrate`); what it moved."""
        if self._opened is None:
            self._opened = await open_layout(self.conn, self.keys, self.timeout_s)
        conn, keys = self._opened
        migrated = await Migration(conn, keys).move(now_ms)
        self._build(conn, keys)
        return migrated

    async def ping(self) -> None:
        await self.queries.ping()

    async def server_time_ms(self) -> int:
        return await self.queries.server_time_ms()

    async def close(self) -> None:
        conn = self._opened[0] if self._opened is not None else self.conn
        await conn.close()
