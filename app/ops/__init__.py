"""What an operator reads over HTTP: the dashboard and outbox pages (`dashboard`, `pages/`), one
user's activation state (`user_state`), the health of the actions loops wait for
(`action_health`), each loop's figures per arm (`loop_figures`, drawn by `figures`), and the
Prometheus scrape (`scrape`). The command line is `app.cli`.

May import: `app.runtime`, `app.intake`, `app.delivery`, `app.web`, `app.storage`,
`app.observability`, `app.engine`, `app.signing`, `app.settings`, `app.clock`, `app.errors`.
"""
