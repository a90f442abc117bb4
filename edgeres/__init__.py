"""edgeres: from images to a measured, deployable ResNet-family model for edge devices."""
from edgeres.checkpoint import ModelMeta, load, load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["ModelMeta", "__version__", "load", "load_checkpoint", "save_checkpoint"]
