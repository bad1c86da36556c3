"""The ``semimer`` command line: a thin layer over the library.

Every sub-command is a module in :mod:`semimer.commands` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are discovered, not listed by hand;
they import heavy libraries inside ``run`` so ``semimer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return code
    except (FileNotFoundError, ValueError, KeyError) as exc:
        # Data errors (RunExistsError included) carry a message naming the file and the fix; no traceback.
        if args.verbose:
            raise
        print(f"semimer {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Every stage is resumable: say so in one line instead of a traceback (128 + SIGINT).
        print(f"semimer {args.command}: interrupted: run the same command again to resume "
              "(finished stages are reused)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `semimer ... | head` closed our stdout: stop quietly. Point stdout at devnull so the
        # interpreter's final flush does not raise again (the recipe of the Python docs, signal module).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout is not a real file (e.g. captured)
            pass
        return 1  # what Python itself exits with on EPIPE


if __name__ == "__main__":
    raise SystemExit(main())
