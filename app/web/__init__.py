"""Everything HTTP, found by its URL: the routes, one package per part of the URL space
(`webhooks`: `POST /webhooks/clerk` and `/webhooks/resend`; `v1`: the API your app calls,
`/v1/actions`, `/v1/users`, `/v1/loops`, `/v1/actions/health`; `pages`: the dashboard, the outbox,
the login and the unsubscribe page), `health` (`/health`, `/health/ready`) and `metrics`
(`/metrics`); and what they stand on: the front door (`gate`) that matches each request to its
route and enforces the route's declared access policy (`auth`) and header and body limits,
uvicorn's protocol bounding a request's head (`head_limit`), browsers' Clerk session tokens
(`session_tokens`) and CORS (`cors`), dashboard sessions (`sessions`), what a route may ask for
of the runtime (`deps`: `Services`, `services_of` and the dependency aliases) and the one shape
of an error's answer (`errors`). No route sends email or runs a loop: the worker does, later.

May import: `app.delivery` (an unsubscribe link's token, a job's record), `app.storage`,
`app.observability`, `app.engine`, `app.signing`, `app.settings`, `app.clock`, `app.errors`.
"""
