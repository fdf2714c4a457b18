"""`python -m tests.soak`: one soak run; prints its counts and exits 1 on any violation."""

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import NoReturn

from tests.soak.checker import Cap
from tests.soak.session import Options, run, summary
from tests.soak.workload import CAP_MIX, Mix
from tests.support.constants import REPO


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    cli.add_argument("--users", type=int, default=2000, help="users signed up over the run")
    cli.add_argument(
        "--seconds", type=float, default=60.0, help="the run's length, before settling"
    )
    cli.add_argument("--workers", type=int, default=2, help="`activation worker` processes")
    cli.add_argument("--seed", type=int, default=1, help="seeds the workload and the nemesis")
    cli.add_argument("--app-dir", type=Path, default=REPO, help="the app to run (its .venv too)")
    cli.add_argument("--nudge-s", type=float, default=10.0, help="the activation loop's timeout")
    cli.add_argument("--fault-every-s", type=float, default=4.0, help="mean seconds between faults")
    cli.add_argument("--no-faults", action="store_true", help="no nemesis, no stand-in faults")
    cli.add_argument("--log-level", default="WARNING", help="the app processes' LOG_LEVEL")
    cli.add_argument(
        "--cap",
        metavar="RULES",
        type=cap_rules,
        help="run with FREQUENCY_CAP=RULES (e.g. 1/20s), more users upgrading, and check the cap",
    )
    cli.add_argument("--json", action="store_true", help="print the counts as JSON")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, stop)  # so that `finally` blocks stop the processes
    options = Options(
        users=args.users,
        seconds=args.seconds,
        workers=args.workers,
        seed=args.seed,
        app_dir=args.app_dir,
        nudge_s=args.nudge_s,
        faults=not args.no_faults,
        fault_every_s=args.fault_every_s,
        log_level=args.log_level,
        cap=args.cap,
        mix=CAP_MIX if args.cap else Mix(),
    )
    outcome = run(options)
    print(json.dumps(outcome.as_dict(), indent=2) if args.json else summary(outcome))
    return 0 if outcome.ok else 1


def cap_rules(text: str) -> str:
    """A FREQUENCY_CAP the checker can read (an argparse error otherwise)."""
    try:
        Cap.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def stop(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
