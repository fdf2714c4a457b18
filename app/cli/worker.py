"""`activation worker`: the delivery worker as its own process, until SIGTERM (or, `--burst`, until
nothing is due)."""

import argparse
import asyncio
import logging
import signal

from app.cli.shared import shared_settings, started
from app.observability.startup import configure_logging, describe_configuration
from app.runtime import Runtime

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="run what is due now, then exit")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_worker(burst=args.burst))


async def _worker(*, burst: bool) -> int:
    settings = shared_settings("worker")
    configure_logging(settings.log_level, settings.log_format)
    logger.log(*describe_configuration(settings))
    runtime = await started(settings)
    try:
        if burst:
            done = await runtime.worker.drain()
            logger.info("burst: %d job(s) run", done)
        else:
            await _until_signalled(runtime)
    finally:
        await runtime.close()
    return 0


async def _until_signalled(runtime: Runtime) -> None:
    """Run the worker; SIGTERM or SIGINT finishes the job in hand, then returns."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runtime.worker.stop)
    logger.info("worker running; SIGTERM stops it after the job in hand")
    await runtime.worker.run()
    logger.info("worker stopped")
