"""The `activation` command: serve the app, run the worker, check loops, handle dead letters.

Every subcommand has `--help` with an example; errors are one line on stderr and exit status 1.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from app.clock import system_clock_ms
from app.engine.evaluate import watched_actions
from app.engine.loop_files import Loop
from app.errors import ActivationError, ConfigError, StorageError
from app.observability.startup import configure_logging, describe_configuration
from app.ops import import_clerk, preview, send_test_webhook, simulate
from app.runtime import Runtime, build_runtime, build_store, load_loop_files, load_settings
from app.settings import Settings, StorageKind, given_settings

logger = logging.getLogger("app.ops.cli")  # also when run as `python -m app.ops.cli`

EXAMPLES = {
    "serve": "activation serve --port 8000",
    "worker": "activation worker          # until SIGTERM\n  activation worker --burst  # drain",
    "check": "activation check loops/",
    "dead": "activation dead list\n  activation dead retry --all",
    "preview": preview.EXAMPLE,
    "simulate": simulate.EXAMPLE,
    "send-test-webhook": send_test_webhook.EXAMPLE,
    "import-clerk": import_clerk.EXAMPLE,
    "suppress": "activation suppress list\n  activation suppress remove user_29w83sxmDNGwOuE",
    "migrate": "activation migrate   # with every worker stopped",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except ActivationError as exc:
        print(f"activation {args.command}: {exc}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="activation", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = _command(commands, "serve", "serve the web app (same as the Procfile web line)")
    # else HOST and PORT, as the Procfile's web line and platforms (Heroku, Render, Railway) set
    # them (read with the other settings)
    serve.add_argument("--host", help="default: HOST, else 127.0.0.1")
    serve.add_argument("--port", type=_port, help="default: PORT, else 8000")
    serve.set_defaults(handler=run_serve)
    worker = _command(commands, "worker", "run the delivery worker as its own process")
    worker.add_argument("--burst", action="store_true", help="run what is due now, then exit")
    worker.set_defaults(handler=run_worker)
    check = _command(
        commands, "check", "validate loop files and templates; warn of actions never reported"
    )
    check.add_argument("loops_dir", nargs="?", type=Path, help="default: LOOPS_DIR")
    check.set_defaults(handler=run_check)
    dead = _command(commands, "dead", "list or retry dead-letter emails")
    dead.add_argument("action", choices=["list", "retry"])
    dead.add_argument("job", nargs="?", help="the job id to retry")
    dead.add_argument("--all", action="store_true", help="retry every dead-letter job")
    dead.set_defaults(handler=run_dead)
    for tool in (preview, simulate, send_test_webhook):
        tool.add_command(commands, _command)
    import_clerk.add_command(commands, _command, shared_settings)  # writes shared storage
    add_suppress(commands)
    migrate = _command(commands, "migrate", "move stored data to this version's schema (once)")
    migrate.set_defaults(handler=run_migrate)
    return root


def _command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, summary: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _port(text: str) -> int:
    """A TCP port, from --port or PORT."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def run_serve(args: argparse.Namespace) -> int:
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


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.loops_dir is not None:
        settings = settings.model_copy(update={"loops_dir": args.loops_dir})
    loops, templates = load_loop_files(settings)
    print(f"{len(loops)} loop(s) and {len(templates.names)} template(s) OK in {settings.loops_dir}")
    if settings.storage_kind is not StorageKind.EMBEDDED:  # the embedded store saw nothing
        for warning in asyncio.run(never_seen_warnings(settings, loops)):
            print(warning, file=sys.stderr)
    return 0


async def never_seen_warnings(settings: Settings, loops: dict[str, Loop]) -> list[str]:
    """A line for each action a loop waits for that was never reported to the service, as the
    sightings in storage say (one script; a process's last minutes may not be in them yet),
    with the reported name it likely misspells. A warning, not a failure: a new loop's action
    may not be sent yet."""
    watched = watched_actions(loops.values())
    store = build_store(settings)
    try:
        await store.open()
        seen = await store.sightings.read(system_clock_ms(), watched=list(watched))
    except StorageError as exc:
        return [f"warning: whether the actions loops wait for are reported was not checked: {exc}"]
    finally:
        await store.close()
    reported = seen.names()
    return [
        never_seen_warning(name, loop_ids, reported)
        for name, loop_ids in sorted(watched.items())
        if name not in reported
    ]


def never_seen_warning(name: str, loop_ids: list[str], reported: set[str]) -> str:
    from app.ops.spelling import did_you_mean

    warning = (
        f"warning: {waits(loop_ids)} for action {name!r}, never reported to this service "
        "(GET /v1/actions/health)"
    )
    close = did_you_mean(name, sorted(reported))
    if close is None:
        return warning
    return f"{warning}; did you mean {close!r}? The sightings in storage show it reported"


def waits(loop_ids: list[str]) -> str:
    if len(loop_ids) == 1:
        return f"loop {loop_ids[0]} waits"
    return f"loops {', '.join(loop_ids)} wait"


def run_worker(args: argparse.Namespace) -> int:
    return asyncio.run(_worker(burst=args.burst))


# Any of these chooses shared storage (the settings refuse a half-configured one, naming the half).
SHARED_STORAGE = frozenset({"redis_url", "upstash_redis_rest_url", "upstash_redis_rest_token"})


def shared_settings(command: str, needs: Mapping[str, str] | None = None) -> Settings:
    """The settings, refused when storage is the embedded store: each process has its own, so
    this command would only ever see an empty one, never the web app's. `needs`: the other
    settings the command cannot run without (field name: what to set it to). Everything missing
    or invalid is named at once, in one message."""
    problems, settings = [], None
    try:
        settings = load_settings()
    except ConfigError as exc:
        problems.append(str(exc))
    given = given_settings()
    if not given & SHARED_STORAGE:
        problems.append(no_shared_storage(command))
    for name, hint in (needs or {}).items():
        if name not in given:
            problems.append(f"{name.upper()} is not set: set it to {hint}")
    if problems or settings is None:
        raise ConfigError(all_of(problems))
    return settings


def no_shared_storage(command: str) -> str:
    return (
        "no shared storage: set REDIS_URL or UPSTASH_REDIS_REST_URL and "
        "UPSTASH_REDIS_REST_TOKEN. With neither, every process keeps its own in-memory store, "
        f"so `activation {command}` would see an empty one, not the web app's (whose worker "
        "runs in-process)"
    )


def all_of(problems: Sequence[str]) -> str:
    """One problem as it is; several counted, on one line."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems: " + "; ".join(
        f"({n}) {problem}" for n, problem in enumerate(problems, 1)
    )


async def started(settings: Settings) -> Runtime:
    """The runtime, its clock synced with Redis's."""
    runtime = build_runtime(settings)
    await runtime.start()
    return runtime


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


def run_dead(args: argparse.Namespace) -> int:
    return asyncio.run(_dead(args.action, args.job, retry_all=args.all))


async def _dead(action: str, job_id: str | None, *, retry_all: bool) -> int:
    from app.storage.queue import Requeued

    runtime = await started(shared_settings("dead"))
    try:
        jobs = await runtime.store.queue.dead_jobs(limit=10_000)
        if action == "list":
            for job in jobs:
                print(f"{job.id}\tattempts={job.attempts}\t{job.last_error}")
            print(f"{len(jobs)} dead-letter job(s)", file=sys.stderr)
            return 0
        chosen = [job for job in jobs if retry_all or job.id == job_id]
        if retry_all and not chosen:
            print("no dead-letter jobs: nothing to retry")
            return 0
        if not chosen:
            raise ActivationError(f"no dead-letter job {job_id!r} (try: activation dead list)")
        queue, now = runtime.store.queue, runtime.clock()
        outcomes = [await queue.retry_dead(job, now_ms=now) for job in chosen]
        for job, outcome in zip(chosen, outcomes, strict=True):
            if outcome is Requeued.KEY_IN_USE:
                print(
                    f"{job.id}: not queued: it may have gone out in batch {job.batch}, whose key "
                    "Resend keeps 24 h from its first attempt; retry after that"
                )
        queued = sum(outcome is Requeued.QUEUED for outcome in outcomes)
        print(f"{queued} job(s) queued again")
        return 0 if queued == len(chosen) else 1
    finally:
        await runtime.close()


def add_suppress(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    summary = "list users suppressed by a bounce or complaint, or lift a suppression"
    suppress = _command(commands, "suppress", summary)
    suppress.add_argument("action", choices=["list", "remove"])
    suppress.add_argument("user_id", nargs="?", help="the user to send loop email to again")
    suppress.set_defaults(handler=run_suppress)


def run_suppress(args: argparse.Namespace) -> int:
    if args.action == "remove" and not args.user_id:
        raise ActivationError("which user? activation suppress remove USER_ID")
    return asyncio.run(_suppress(args.user_id if args.action == "remove" else None))


async def _suppress(user_id: str | None) -> int:
    """List the suppressed users (no user id), or lift one user's suppression."""
    runtime = await started(shared_settings("suppress"))
    try:
        if user_id is None:
            users = await runtime.store.users.suppressed(limit=10_000)
            for uid, at_ms in users:
                print(f"{uid}\tsuppressed_at={at_ms}")
            print(f"{len(users)} suppressed user(s)", file=sys.stderr)
            return 0
        if not await runtime.store.users.unsuppress(user_id, now_ms=runtime.clock()):
            raise ActivationError(f"user {user_id!r} is not suppressed")
        print(f"{user_id}: suppression lifted; loop email may resume")
        return 0
    finally:
        await runtime.close()


def run_migrate(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
