"""The pages an operator or a user opens in a browser: `GET /dashboard` and its login and
logout, `GET /outbox` (`dashboard`, drawn with `panels`), and `GET`/`POST /unsubscribe`
(`unsubscribe`); their Jinja templates in `templates/`."""
