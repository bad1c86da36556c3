"""semimer models [PATTERN]"""

HELP = "list the registered models"


def add_arguments(p):
    p.add_argument("pattern", nargs="?", default="*")


def run(args) -> int:
    from semimer.models import list_models

    print("\n".join(list_models(args.pattern)))
    return 0
