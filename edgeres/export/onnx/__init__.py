"""ONNX export and INT8 QDQ quantization. onnx, onnxruntime and onnxslim load only when a function runs.

Exporter: torch.onnx's TorchScript path (dynamo=False) by default. Under torch 2.14 it honours the
requested opset (17, which TensorRT 8.5 on JetPack 5 parses), needs no onnxscript, takes about a
second, and after onnxslim gives the same graph as the dynamo path. The dynamo exporter stays
selectable (exporter="dynamo") for when TorchScript export is removed; it emits opset 18 at least.
"""
from edgeres.export.onnx.convert import (INPUT_NAME, META_KEY, OUTPUT_NAME, export_module, export_onnx,
                                         read_onnx_meta, run_onnx)
from edgeres.export.onnx.quantize import find_attention_nodes, find_scope_nodes, quantize_onnx, tensorrt_qdq_problems

__all__ = [
    "INPUT_NAME", "META_KEY", "OUTPUT_NAME", "export_module", "export_onnx", "find_attention_nodes",
    "find_scope_nodes", "quantize_onnx", "read_onnx_meta", "run_onnx", "tensorrt_qdq_problems",
]
