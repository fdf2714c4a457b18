"""The ground floor: loop files and their conditions (`loop_files`, the SQL form in
`conditions`, property and profile filters in `filters`), the pure evaluation of one user's loops
(`evaluate`: loops, a snapshot and `now` in, decisions out), who is in which arm of a holdout or
an experiment (`assign`), the one job-id type, the funnel counters those decisions feed
(`funnel`) and what they measure (`measure`: rates and the uplift's interval). Nothing here
talks to Redis, HTTP or email: storage, web and delivery build on the engine, never the reverse.

May import: `app.errors`.
"""
