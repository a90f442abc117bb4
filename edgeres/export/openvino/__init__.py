"""OpenVINO export: PyTorch -> IR (fp32 / fp16 weights) and NNCF INT8. OpenVINO and NNCF load lazily."""
from edgeres.export.openvino.convert import export_openvino, name_tensors
from edgeres.export.openvino.quantize import (find_attention, find_scope_ops, quantize_openvino,
                                              quantize_openvino_with_accuracy_control)

__all__ = ["export_openvino", "find_attention", "find_scope_ops", "name_tensors", "quantize_openvino",
           "quantize_openvino_with_accuracy_control"]
