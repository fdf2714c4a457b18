"""Email out: the email-job record and its lifecycle (`jobs`), composing a loop's email for one
user, sending it through Resend or the local outbox exactly once in effect, the worker that
claims due jobs and runs them, and one-click unsubscribe (tokens and its route).

May import: `app.storage`, `app.web` (the unsubscribe route), `app.observability`, `app.engine`,
`app.signing`, `app.settings`, `app.clock`, `app.errors`.

The job record sits lower than the rest of delivery, under storage, which keeps it:
`app.delivery.jobs` may import: `app.engine`, `app.errors`.
"""
