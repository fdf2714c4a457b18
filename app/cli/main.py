"""The `activation` command: serve the app, run the worker, check loops, handle dead letters.

Every subcommand has `--help` with an example; errors are one line on stderr and exit status 1.
Building the parser imports nothing but `argparse`: each command lives in its own module of this
package (`add_arguments`, `run`), imported only when it is the one asked for, so
`activation --help` answers at once and a command pays only for what it uses.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# name: (summary, example, its module in this package)
COMMANDS = {
    "serve": (
        "serve the web app (same as the Procfile web line)",
        "activation serve --port 8000",
        "serve",
    ),
    "worker": (
        "run the delivery worker as its own process",
        "activation worker          # until SIGTERM\n  activation worker --burst  # drain",
        "worker",
    ),
    "check": (
        "validate loop files and templates; warn of actions never reported",
        "activation check loops/",
        "check",
    ),
    "dead": (
        "list or retry dead-letter emails",
        "activation dead list\n  activation dead retry --all",
        "dead",
    ),
    "preview": (
        "render a template's subject, HTML and text",
        "activation preview activation_welcome\n"
        "  activation preview activation_nudge --user-id user_29w83sxmDNGwOuEthce5gg56FcC\n"
        "  activation preview activation_welcome --user user.json --out preview.html",
        "preview",
    ),
    "simulate": (
        "dry-run a loop on a virtual clock; sends nothing",
        "activation simulate --loop activation --actions first_project_created@2m\n"
        "  activation simulate --loop activation --advance 10m           # no action: the nudge\n"
        "  activation simulate --loop milestone_ten_projects --actions project_created*10",
        "simulate",
    ),
    "send-test-webhook": (
        "post a signed Clerk user.created to a URL",
        "activation send-test-webhook --url http://127.0.0.1:8000/webhooks/clerk",
        "send_test_webhook",
    ),
    "import-clerk": (
        "import the users Clerk already has (idempotent; activation loops not entered)",
        "activation import-clerk --dry-run        # what it would do; writes nothing\n"
        "  activation import-clerk                  # every user; no activation loop starts\n"
        "  activation import-clerk --since 2026-01-15 --enter-loops  # recent signups enter loops",
        "import_clerk",
    ),
    "suppress": (
        "list users suppressed by a bounce or complaint, or lift a suppression",
        "activation suppress list\n  activation suppress remove user_29w83sxmDNGwOuE",
        "suppress",
    ),
    "migrate": (
        "move stored data to this version's schema (once)",
        "activation migrate   # with every worker stopped",
        "migrate",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(asked_for(argv)).parse_args(argv)
    from app.errors import ActivationError

    try:
        return int(command_module(args.command).run(args))
    except ActivationError as exc:
        print(f"activation {args.command}: {exc}", file=sys.stderr)
        return 1


def asked_for(argv: Sequence[str]) -> str | None:
    """The command `argv` names (its first word that is no option), if it is one."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in COMMANDS else None


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command`'s module imported, for its arguments."""
    root = argparse.ArgumentParser(prog="activation", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    for name, (summary, example, _) in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == command:
            command_module(name).add_arguments(sub)
    return root


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"app.cli.{COMMANDS[name][2]}")


if __name__ == "__main__":
    raise SystemExit(main())
