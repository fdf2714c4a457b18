"""What comes in: the routes for Clerk's user webhooks, the app's actions and Resend's delivery
events. Each verifies and parses its request, stores it through `app.storage` and answers; none
sends email or runs a loop (the worker does, later).

May import: `app.web`, `app.storage`, `app.observability`, `app.engine`, `app.delivery.jobs`
(the job records a Resend event reports on; never the sending), `app.signing`, `app.settings`,
`app.clock`, `app.errors`.
"""
