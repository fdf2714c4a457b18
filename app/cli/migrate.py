"""`activation migrate`: move data of an older schema to this one (once, with the workers
stopped)."""

import argparse
import asyncio

from app.cli.shared import shared_settings
from app.clock import system_clock_ms
from app.runtime import build_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: it moves whatever is stored."""


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_migrate())


async def _migrate() -> int:
    """Move v1 data to this version's schema; the service refuses v1 data until then."""
    settings = shared_settings("migrate")
    store = build_store(settings)
    try:
        print(await store.migrate(system_clock_ms()))
        return 0
    finally:
        await store.close()
