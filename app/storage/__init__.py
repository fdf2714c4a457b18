"""Everything the service keeps, in Redis and nowhere else: the key schema (`keys`), the Lua
scripts and what runs them (`scripts`, `lua/`), the three transports (`connections`, `wire`),
the stored types (`records`), one module per aggregate (`users`, `actions`, `queue`, `reads`,
`logins`) and `Store`, the facade that holds them. Only this package talks to Redis.

May import: `app.engine` (the snapshots it reads, the decisions it applies), `app.delivery.jobs`
(the email-job records it keeps; nothing else of delivery), `app.settings`, `app.errors`.
"""
