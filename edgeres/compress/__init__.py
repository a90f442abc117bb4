"""Model compression: structured pruning, unstructured sparsity and knowledge distillation."""
from edgeres.compress.distill import Distiller, kd_loss, load_teacher
from edgeres.compress.prune import PruneConfig, PruneReport, prune
from edgeres.compress.sparsity import sparsify

__all__ = ["Distiller", "PruneConfig", "PruneReport", "kd_loss", "load_teacher", "prune", "sparsify"]
