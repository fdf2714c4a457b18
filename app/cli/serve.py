"""`activation serve`: the web app under uvicorn, its links naming the address it serves on."""

import argparse
import os

from app.settings import Settings, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # else HOST and PORT, as the Procfile's web line and platforms (Heroku, Render, Railway) set
    # them (read with the other settings)
    parser.add_argument("--host", help="default: HOST, else 127.0.0.1")
    parser.add_argument("--port", type=port, help="default: PORT, else 8000")


def port(text: str) -> int:
    """A TCP port, from --port or PORT."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.web.gate import MAX_HEADER_BYTES

    settings = served_settings(load_settings(), args.host, args.port)
    # the app reads its settings as the process starts it: the address it serves on is then the
    # one its links name (HOST and PORT, `Settings.links_url`)
    os.environ.update(HOST=settings.host, PORT=str(settings.port))
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        http=_http_protocol(),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # h11's own bound on a request's head
    )
    return 0


def served_settings(settings: Settings, host: str | None, port: int | None) -> Settings:
    """The settings with the address `serve` listens on: its flags, else HOST and PORT."""
    served = {"host": host or settings.host, "port": port or settings.port}
    return settings.model_copy(update=served)


def _http_protocol() -> str:
    """httptools with a bound on a request's head (`app.web.head_limit`), else h11."""
    import importlib.util

    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from app.web.head_limit import PROTOCOL

    return PROTOCOL
