"""`python -m app.cli`: the `activation` command."""

from app.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
