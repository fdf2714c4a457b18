"""Email out: the loop folder as the service loads it (`loop_folder`: loop files and templates,
every use of a template checked), composing a loop's email for one user (`compose`, `templates`,
with its unsubscribe link: `unsubscribe_links`), sending it through Resend (`resend_api`) or the
local outbox (`outbox`) exactly once in effect (`attempts`, `batch`), and the worker that claims
due turns and runs them (`worker`); a webhook step's signed POST (`webhook_client`), through the
same turns and settles. The email-job record it sends is the engine's
(`app.engine.email_jobs`): storage keeps it, so it sits below both.

May import: `app.storage`, `app.observability`, `app.engine`, `app.signing`, `app.settings`,
`app.clock`, `app.errors`.
"""
