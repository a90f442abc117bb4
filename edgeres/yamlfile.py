"""Reading a user's YAML file so that a validation error can say where in the file it is: the safe-loaded
document together with its node tree, and the line and column a field path points at."""
from __future__ import annotations

from typing import Any

import yaml


def parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """The document (safe types only) and its node tree, which knows where each key is."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def key_mark(node: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Mark | None:
    """Where the key (or list item) `loc` points at starts in the file; None if it is not there (missing)."""
    mark = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not found:
                return mark if mark is not None else node.start_mark
            mark, node = found[0][0].start_mark, found[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark
