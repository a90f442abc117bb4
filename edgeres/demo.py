"""`make demo` / `make detect-demo`: a packaged demo recipe end to end, ending with the report's path and summary
table. `python -m edgeres.demo [RECIPE] [edgeres run options]`; the recipe defaults to `demo`. `--verbose` (`-v`)
is edgeres's own option, passed before `run`: it shows third-party libraries' logs and progress bars too."""
from __future__ import annotations

import sys

from edgeres.cli import main as cli_main

_GLOBAL_OPTIONS = ("--verbose", "-v")


def main() -> None:
    args = sys.argv[1:]
    recipe = args.pop(0) if args and not args[0].startswith("-") else "demo"
    own = [a for a in args if a in _GLOBAL_OPTIONS]
    sys.argv = ["edgeres", *own, "run", recipe, *[a for a in args if a not in _GLOBAL_OPTIONS]]
    cli_main()


if __name__ == "__main__":
    main()
