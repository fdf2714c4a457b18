"""The pages an operator or a user opens in a browser: `GET /dashboard` and its login and
logout (`dashboard`, drawn with `panels`), `GET /outbox` (`outbox`), and `GET`/`POST
/unsubscribe` (`unsubscribe`); their Jinja templates in `templates/`, rendered in one layout
(`layout`)."""
