"""Stand-ins for what the app talks to, served on real ports, and their own tests (the `test_*.py`
files here), kept apart from the tests of the app:

- `upstash`: Upstash's Redis REST API in front of a real Redis, and `serve()` for any ASGI app
- `resend`: Resend's API (`POST /emails`, `POST /emails/batch`), checked against its schema,
  failing on demand
- `clerk`: Clerk's Backend API users endpoints, for `activation import-clerk`
- `scripted_redis`: a Redis whose every connection does what the test scripted
- `redis_cluster`: a local Redis Cluster of 3 masters and 3 replicas (the `redis_cluster` fixture)
"""
