"""What an operator uses: the `activation` command (`cli`, with one module per tool: `preview`,
`simulate`, `send_test_webhook`, `import_clerk`, which reads Clerk's users through
`clerk_users`), the dashboard and outbox pages (`dashboard`, `pages/`), one
user's activation state over HTTP (`user_state`), the health of the actions loops wait for
(`action_health`), each loop's figures per arm (`loop_figures`, drawn by `figures`), the
Prometheus scrape (`scrape`), the sample data the tools preview and
simulate with (`samples`), and the did-you-mean of a mistyped name (`spelling`).

May import: `app.runtime` (the commands build a process's parts as the web app does),
`app.intake`, `app.delivery`, `app.web`, `app.storage`, `app.observability`, `app.engine`,
`app.signing`, `app.settings`, `app.clock`, `app.errors`.
"""
