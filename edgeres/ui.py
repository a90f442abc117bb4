"""Terminal output: progress bars and closing tables (rich), logging to stderr."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Piped output (CI logs, files) gets wide tables rather than rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
stdout = Console(width=None if sys.stdout.isatty() else 160)


# Third-party loggers whose warnings tell an edgeres user nothing they can act on; --verbose shows them.
_QUIET = {
    # NNCF's torch backend imports it while quantizing an IR; on a machine with a CUDA toolkit and no GPU it
    # warns "No CUDA runtime is found" about building C++ extensions, which edgeres never builds.
    "torch.utils.cpp_extension": logging.ERROR,
}


def setup_logging(verbose: bool = False) -> None:
    """Route the `edgeres` logger to stderr through rich; third-party chatter stays at warnings."""
    logger = logging.getLogger("edgeres")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield `advance(n, **fields)`; shows a bar on a terminal, nothing when disabled or piped."""
    if not enabled or not console.is_terminal:
        yield lambda n=1, **fields: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            info = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A closing summary table on stdout."""
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    stdout.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def fail(message: str) -> None:
    """Print an error line; the message is plain text (paths like '[x]' are never read as rich markup)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    sys.stderr.flush()


# ---------------------------------------------------------------- comma-separated option values

def csv_values(text: str, option: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c"); an empty list is bad input naming `option`."""
    from edgeres.errors import UserInputError

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise UserInputError(f"{option} takes a comma-separated list, got {text!r}")
    return values


def int_values(text: str, option: str) -> tuple[int, ...]:
    from edgeres.errors import UserInputError

    try:
        return tuple(int(v) for v in csv_values(text, option))
    except ValueError:
        raise UserInputError(f"{option} takes comma-separated integers, got {text!r}") from None


def float_values(text: str, option: str) -> tuple[float, ...]:
    from edgeres.errors import UserInputError

    try:
        return tuple(float(v) for v in csv_values(text, option))
    except ValueError:
        raise UserInputError(f"{option} takes comma-separated numbers, got {text!r}") from None
