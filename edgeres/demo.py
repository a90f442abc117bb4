"""`make demo`: the packaged demo recipe end to end, ending with the report's path and summary table."""
from __future__ import annotations

import sys

from edgeres.cli import main as cli_main


def main() -> None:
    sys.argv = ["edgeres", "run", "demo", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
