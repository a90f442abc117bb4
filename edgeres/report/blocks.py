"""What a report is made of: headings, paragraphs, bullet lists, tables and images, rendered alike to Markdown and
HTML by `edgeres.report.render`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    text: str
    css_class: str | None = None


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclasses.dataclass(frozen=True)
class Table:
    id: str
    columns: list[str]
    rows: list[list[str]]
    first_numeric: int | None = None


@dataclasses.dataclass(frozen=True)
class Image:
    alt: str
    path: Path
    rel: str  # from the report's directory, with forward slashes


Block = Union[Heading, Para, Bullets, Table, Image]
