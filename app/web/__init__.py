"""The HTTP layer the routes stand on: the front door (`gate`) that matches each request to its
route and enforces the route's declared access policy (`auth`) and header and body limits,
uvicorn's protocol bounding a request's head (`head_limit`), browsers' Clerk session tokens
(`session_tokens`) and CORS (`cors`), dashboard sessions, health checks, what a route may ask for
of the runtime (`deps`: `Services`, `services_of` and the dependency aliases) and how errors
become HTTP answers (`errors`). A stage's own routes live in its package.

May import: `app.storage`, `app.observability`, `app.engine`, `app.signing`, `app.settings`,
`app.clock`, `app.errors`.
"""
