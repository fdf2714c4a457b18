"""Email out: the email-job record and its lifecycle (`jobs`), the loop folder as the service
loads it (`loop_folder`: loop files and templates, every use of a template checked), composing a
loop's email for one user (`compose`, `templates`, with its unsubscribe link: `unsubscribe_links`),
sending it through Resend (`resend`) or the local outbox exactly once in effect (`send`, `batch`),
and the worker that claims due turns and runs them (`worker`).

May import: `app.storage`, `app.observability`, `app.engine`, `app.signing`, `app.settings`,
`app.clock`, `app.errors`.

The job record sits lower than the rest of delivery, under storage, which keeps it:
`app.delivery.jobs` may import: `app.engine`, `app.errors`.
"""
