"""The ground floor: the loop (`loops`), its file format (`loop_spec`, its JSON Schema
`loop_schema`) and how files are read (`loop_loading`); conditions (the SQL form in `conditions`,
its property tests in `query_properties`, the table it reads in `query_table`; property and
profile filters in `filters`); the pure evaluation of one user's loops (`evaluate`: loops, a
snapshot and `now` in, decisions out); who is in which arm of a holdout or an experiment
(`assign`); the job ids (`job_ids`) and the email-job record with its lifecycle
(`email_jobs`); the did-you-mean of a mistyped name (`spelling`); the funnel counters those
decisions feed (`funnel`) and what they measure (`measure`: rates and the uplift's interval).
Nothing here talks to Redis, HTTP or email: storage, web and delivery build on the engine, never
the reverse.

May import: `app.clock` (time's units and conversions; never the time itself: `now` is given),
`app.errors`.
"""
