"""The ground floor: loop files and their conditions, the pure evaluation of one user's loops
(`evaluate`: loops, a snapshot and `now` in, decisions out), the one job-id type, and the funnel
counters those decisions feed. Nothing here talks to Redis, HTTP or email: storage, web and
delivery build on the engine, never the reverse.

May import: `app.errors`.
"""
