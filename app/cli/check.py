"""`activation check`: every mistake in the loop files and templates, and the actions loops wait
for that nothing reports."""

import argparse
import asyncio
import sys
from pathlib import Path

from app.clock import system_clock_ms
from app.delivery.loop_folder import load_loop_files
from app.engine.evaluate import watched_actions
from app.engine.loops import Loop
from app.errors import StorageError
from app.settings import Settings, StorageKind, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("loops_dir", nargs="?", type=Path, help="default: LOOPS_DIR")


def run(args: argparse.Namespace) -> int:
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
    from app.runtime import build_store  # storage: only when there is one to read

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
    from app.engine.spelling import did_you_mean

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
