"""TensorRT: bundles a target builds engines from (no GPU needed), and engine builds where a GPU is present.

tensorrt loads only inside build_engine and the TensorRT runner.
"""
from edgeres.export.tensorrt.convert import EngineSpec, build_engine, prepare_tensorrt, trtexec_command
from edgeres.export.tensorrt.nms import add_efficient_nms

__all__ = ["EngineSpec", "add_efficient_nms", "build_engine", "prepare_tensorrt", "trtexec_command"]
