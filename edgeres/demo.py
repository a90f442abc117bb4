"""`make demo`: the main job on built-in data, ending with where the results are."""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from edgeres.cli import main as cli_main


def main() -> None:
    run = Path("runs") / f"demo-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    steps = [
        ["train", "--model", "se_resnet18", "--data", "digits", "--epochs", "10", "--img-size", "32",
         "--out", str(run)],
        ["eval", str(run)],
    ]
    for argv in steps:
        print(f"\n$ edgeres {' '.join(argv)}", flush=True)
        sys.argv = ["edgeres", *argv]
        try:
            cli_main()
        except SystemExit as e:
            if e.code:
                raise
    print(f"\nresults: {run.resolve()} (metrics.json, confusion_test.png, curves.png, model.safetensors)")


if __name__ == "__main__":
    main()
