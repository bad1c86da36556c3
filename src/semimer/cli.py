"""The ``semimer`` command line: a thin layer over the library.

Every sub-command is a module in :mod:`semimer.commands` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are discovered, not listed by hand;
they import heavy libraries inside ``run`` so ``semimer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from semimer import __version__
from semimer.utils import setup_logging


def _command_modules():
    import semimer.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield info.name.replace("_", "-"), importlib.import_module(f"semimer.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semimer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"semimer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        # Data errors carry a message naming the file and the fix; no traceback for users.
        if args.verbose:
            raise
        print(f"semimer {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
