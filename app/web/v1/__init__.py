"""The API your app calls, under `/v1`: `POST /v1/actions` (`actions`, with what a browser may
report and how often: `browser_limits`), `GET /v1/users/{id}` (`users`), `GET /v1/loops`
(`loops`) and `GET /v1/actions/health` (`action_health`)."""
