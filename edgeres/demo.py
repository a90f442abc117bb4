"""`make demo` / `make detect-demo`: a packaged demo recipe end to end, ending with the report's path and summary
table. `python -m edgeres.demo [RECIPE] [edgeres run options]`; the recipe defaults to `demo`."""
from __future__ import annotations

import sys

from edgeres.cli import main as cli_main


def main() -> None:
    args = sys.argv[1:]
    recipe = args.pop(0) if args and not args[0].startswith("-") else "demo"
    sys.argv = ["edgeres", "run", recipe, *args]
    cli_main()


if __name__ == "__main__":
    main()
