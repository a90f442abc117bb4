"""edgeres: from images to a measured, deployable ResNet-family model for edge devices."""
from __future__ import annotations

from typing import Any

from edgeres.meta import ModelMeta

__version__ = "0.1.0"
__all__ = ["ModelMeta", "__version__", "load", "load_checkpoint", "save_checkpoint"]

# torch loads when a checkpoint function is first used, not on `import edgeres`: ModelMeta and the readers
# of exported files must work where torch is not installed (a deploy bundle on the target).
_CHECKPOINT_FUNCTIONS = ("load", "load_checkpoint", "save_checkpoint")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_FUNCTIONS:
        from edgeres import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'edgeres' has no attribute {name!r}")
