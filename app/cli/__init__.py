"""The `activation` command line (`main`): one module per command, each with `add_arguments` and
`run` (`serve`, `worker`, `check`, `dead`, `suppress`, `migrate`, `preview`, `simulate`,
`send_test_webhook`, `import_clerk`, which reads Clerk's users through `clerk_users`), what the
storage commands share (`shared`), the sample data the tools preview and simulate with
(`samples`), and how they say a step's `within` windows (`windows`).

May import: `app.runtime` (the commands build a process's parts as the web app does),
`app.web` (the pages' look, for `preview --out`), `app.delivery`, `app.storage`,
`app.observability`, `app.engine`, `app.signing`, `app.settings`, `app.clock`, `app.errors`.
"""
