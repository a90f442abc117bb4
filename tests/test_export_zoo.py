"""Every tiny variant exports to OpenVINO FP32 and agrees with PyTorch (ONNX is swept in test_onnx.py)."""
import numpy as np
import pytest
import torch

from edgeres import runtime
from edgeres.checkpoint import ModelMeta
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.validate import TOLERANCES, compare_outputs, judge
from edgeres.models import create, list_models, model_task


@pytest.mark.parametrize("name", [m for m in list_models("test_*") if model_task(m) == "classification"])
def test_openvino_fp32_export_validates(name, tmp_path):
    model = create(name, num_classes=5, in_chans=1).eval()
    meta = ModelMeta(arch=name, num_classes=5, in_chans=1, img_size=32)
    export_openvino(model, meta, tmp_path / "m.xml")
    x = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    stats = compare_outputs(reference, runtime.load(tmp_path / "m.xml", precision="fp32")(x))
    assert judge(stats, TOLERANCES["fp32"]) == [], stats
    assert stats["top1_agreement"] == 1.0
