"""Everything the service keeps, in Redis and nowhere else: the key schema (`keys`), the Lua
scripts and what runs them (`scripts`, `lua/`), the transports (`connections`: Upstash REST,
one Redis over our own pipelined client `redis_client`, a Redis Cluster with its shards
`cluster_shards`, the embedded store), the stored types (`records`), one module per aggregate
(`users`, `actions`, `queue`, `batches`, `queries`, `logins`, `rates`, `action_sightings`),
the move from an older schema (`migrate`) and `Store`, the facade that holds them. Only this
package talks to Redis.

May import: `app.engine` (the snapshots it reads, the decisions it applies, the email-job records
it keeps), `app.clock` (time's units and a moment's UTC day), `app.settings`, `app.errors`.
"""
