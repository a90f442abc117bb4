"""The YOLO detector: head shapes, box decode, in-graph NMS, anchors, loss, weights, freezing, pruning, ONNX."""
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import batched_nms

from edgeres.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from edgeres.errors import UserInputError
from edgeres.models import create
from edgeres.models.anchors import DEFAULT_ANCHORS, kmeans_anchors
from edgeres.models.yolo import YOLOV3_DARKNET53_PARAMS, NmsConfig, YoloDecode, select_detections
from edgeres.tasks.detect_loss import YoloLoss

# Anchors for 64 px test images, 3 per stride, small to large.
ANCHORS_64 = [[6, 6], [10, 12], [14, 10], [18, 20], [24, 30], [32, 24], [40, 40], [50, 56], [60, 48]]


def tiny(num_classes: int = 3, **kwargs) -> torch.nn.Module:
    return create("test_yolo", num_classes=num_classes, anchors=ANCHORS_64, **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_raw_head_maps_per_stride_in_train_and_eval(training):
    model = tiny().train(training)
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 8, 12), (2, 24, 4, 6), (2, 24, 2, 3)]  # 3 anchors * (5 + 3)
    assert model.strides == (8, 16, 32) and tuple(model.anchors.shape) == (3, 3, 2)
    assert model.task == "detection" and len(model.output_names) == 3


def test_yolo_resnet18_shapes_and_size():
    model = create("yolo_resnet18", num_classes=2).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 21, 8, 8), (1, 21, 4, 4), (1, 21, 2, 2)]
    assert model.backbone.feature_channels == (128, 256, 512)
    with torch.device("meta"):
        coco = create("yolo_resnet18", num_classes=80)
    assert sum(p.numel() for p in coco.parameters()) == 14_913_597  # about a quarter of YOLOv3-Darknet53
    assert YOLOV3_DARKNET53_PARAMS == 61_949_149


def test_resnet_features_only_gives_strides_8_16_32_and_no_classifier():
    backbone = create("test_resnet", features_only=True)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [8, 4, 2]
    assert tuple(f.shape[1] for f in feats) == backbone.feature_channels == (16, 32, 64)
    assert not hasattr(backbone, "fc") and "fc" not in backbone.stage_names
    classifier = create("test_resnet", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(classifier(x), classifier.forward_head(classifier.forward_features(x)[-1]))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_turns_a_hand_made_map_into_the_known_box():
    anchors = torch.tensor(ANCHORS_64, dtype=torch.float32).view(3, 3, 2)
    maps = [torch.full((1, 3 * 7, 64 // s, 64 // s), -20.0) for s in (8, 16, 32)]
    # Stride 16, anchor 1 ([24, 30]), row 2, column 1: centre offset 0.75 -> +1 cell, size factor (2 * 0.75)^2.
    cell = maps[1][0, 7:14, 2, 1]
    cell[:4] = torch.tensor([_logit(0.75), _logit(0.5), _logit(0.75), _logit(0.5)])
    cell[4], cell[5], cell[6] = _logit(0.8), _logit(0.1), _logit(0.5)
    boxes, scores = YoloDecode(num_classes=2, strides=(8, 16, 32))(maps, anchors)
    assert boxes.shape == (1, 3 * 64 + 3 * 16 + 3 * 4, 4) and scores.shape == (1, 252, 2)
    k = 3 * 64 + 1 * 16 + 2 * 4 + 1  # stride 8 first; then anchor, row, column
    cx, cy, w, h = (1 + 1.0) * 16, (2 + 0.5) * 16, 24 * 2.25, 30 * 1.0
    torch.testing.assert_close(boxes[0, k], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    torch.testing.assert_close(scores[0, k], torch.tensor([0.8 * 0.1, 0.8 * 0.5]))
    assert scores[0].max() == scores[0, k].max()


def test_inference_module_shares_the_models_parameters():
    model = tiny().eval()
    inference = model.inference_module()
    assert inference.output_names == ("boxes", "scores")
    assert {id(p) for p in inference.parameters()} == {id(p) for p in model.parameters()}
    x = torch.randn(1, 3, 64, 64)
    before = inference(x)[1].clone()
    with torch.no_grad():
        model.heads[0].bias.add_(1.0)
    assert not torch.allclose(inference(x)[1], before)
    modules = dict(inference.named_modules())
    assert all(prefix in modules for prefix in inference.keep_float)
    assert {id(m) for m in model.prune_ignored()} == {id(m) for m in model.heads}


def test_classifier_is_its_own_inference_module_and_refuses_nms():
    classifier = create("test_resnet", num_classes=3)
    assert classifier.inference_module() is classifier
    with pytest.raises(UserInputError, match="nms"):
        classifier.inference_module({"max_det": 10})


def _reference_nms(boxes, scores, conf, iou, max_det):
    """torchvision's batched_nms image by image: what the in-graph NMS must equal."""
    out = []
    for b, s in zip(boxes, scores):
        k, c = (s > conf).nonzero(as_tuple=True)
        keep = batched_nms(b[k], s[k, c], c, iou)[:max_det]
        out.append(torch.cat([b[k][keep], s[k, c][keep, None], c[keep, None].float()], 1))
    return out


@pytest.mark.parametrize("max_det", [4, 100])
def test_nms_agrees_with_torchvision_batched_nms_and_pads(max_det):
    xy = torch.rand(3, 60, 2) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(3, 60, 2) * 20], -1)
    scores = torch.rand(3, 60, 3)
    scores[2] = 0  # an image with nothing found
    config = NmsConfig(max_det=max_det, iou=0.5, conf=0.3)
    out = select_detections(boxes, scores, config)
    assert out.shape == (3, max_det, 6)
    for got, want in zip(out, _reference_nms(boxes, scores, 0.3, 0.5, max_det)):
        n = len(want)
        torch.testing.assert_close(got[:n], want)
        assert (got[n:, :5] == 0).all() and (got[n:, 5] == -1).all()
    assert (out[0, :, 5] >= 0).sum() == min(max_det, len(_reference_nms(boxes, scores, 0.3, 0.5, 1000)[0]))
    assert (out[2, :, 5] == -1).all()


@pytest.mark.parametrize("bad", [{"max_det": 0}, {"iou": 1.5}, {"conf": "high"}, {"topk": 5}])
def test_nms_config_refuses_bad_values(bad):
    with pytest.raises(UserInputError, match="nms"):
        tiny().inference_module(bad)


def test_kmeans_anchors_recover_planted_clusters():
    rng = np.random.default_rng(0)
    planted = np.array([[8, 10], [16, 12], [14, 28], [30, 30], [40, 70], [75, 40], [90, 90], [120, 200], [220, 160]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (50, 2))) for c in planted])
    anchors = np.array(kmeans_anchors(wh, k=9, seed=0))
    assert np.allclose(anchors, planted, rtol=0.05)
    assert list(anchors.prod(1)) == sorted(anchors.prod(1))


def test_kmeans_anchors_fall_back_with_few_distinct_boxes():
    anchors = kmeans_anchors(np.array([[20.0, 10.0], [20.0, 10.0], [40.0, 40.0], [0.0, 5.0]]), k=9)
    assert len(anchors) == 9 and [20.0, 10.0] in anchors and [40.0, 40.0] in anchors
    areas = [w * h for w, h in anchors]
    assert areas == sorted(areas)
    assert kmeans_anchors(np.zeros((0, 2))) == DEFAULT_ANCHORS
    with pytest.raises(UserInputError, match="n, 2"):
        kmeans_anchors(np.ones((4, 3)))


@pytest.mark.parametrize("anchors", [[[10, 10]] * 4, [[10, -1]] * 9, [[10, 10, 10]] * 9, "small"])
def test_bad_anchors_are_refused(anchors):
    with pytest.raises(UserInputError, match="anchors"):
        create("test_yolo", num_classes=3, anchors=anchors)


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with bright rectangles in their class's channel, and those rectangles as targets."""
    targets = torch.tensor([[0, 0, 8, 8, 24, 28], [0, 2, 30, 34, 60, 58], [1, 1, 10, 40, 20, 52]])
    images = torch.zeros(2, 3, 64, 64)
    for i, c, x1, y1, x2, y2 in targets.tolist():
        images[i, c, y1:y2, x1:x2] = 2.0
    return images, targets.float()


def _fit(model, steps: int, lr: float) -> list[float]:
    images, targets = _two_images()
    loss_fn = YoloLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_decreases_when_overfitting_two_images():
    losses = _fit(tiny().train(), 30, 3e-3)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow
def test_overfit_model_finds_the_boxes_through_the_inference_module():
    model = tiny().train()
    _fit(model, 200, 1e-2)
    images, targets = _two_images()
    with torch.no_grad():
        found = model.eval().inference_module({"max_det": 5, "iou": 0.5, "conf": 0.8})(images)
    for i in range(2):
        want = targets[targets[:, 0] == i]
        got = found[i][found[i][:, 5] >= 0]
        assert len(got) == len(want)
        iou = torchvision.ops.box_iou(got[:, :4], want[:, 2:])
        assert (iou.max(1).values > 0.8).all() and set(got[:, 5].tolist()) == set(want[:, 1].tolist())


def test_loss_with_no_targets_and_under_bf16_autocast():
    model = tiny().train()
    images, targets = _two_images()
    loss_fn = YoloLoss(model)
    empty = loss_fn(model(images), torch.zeros(0, 6))
    assert torch.isfinite(empty) and empty > 0
    assert loss_fn.last_components["box"] == 0 and loss_fn.last_components["cls"] == 0
    empty.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(images)
        loss = loss_fn(outs, targets)
    assert outs[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert set(loss_fn.last_components) == {"box", "obj", "cls"} and loss_fn.last_components["box"] > 0


def test_backbone_loads_from_a_classification_checkpoint(tmp_path):
    classifier = create("test_resnet", num_classes=5)
    save_checkpoint(classifier, ModelMeta(arch="test_resnet", num_classes=5, img_size=64), tmp_path / "cls")
    neck_before = {k: v.clone() for k, v in tiny().neck.state_dict().items()}
    model = tiny(weights=tmp_path / "cls")
    source = classifier.state_dict()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert not any(torch.equal(v, neck_before[k]) for k, v in model.neck.state_dict().items() if v.dim() == 4)


def test_backbone_loads_a_torchvision_resnet18_file(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    from edgeres.models import load_weights

    model = create("yolo_resnet18", num_classes=2)
    report = load_weights(model, tmp_path / "r18.pth")
    assert report.into == "backbone" and report.dropped == ["fc.weight", "fc.bias"]
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_detector_checkpoint_for_other_classes_reinitialises_the_heads(tmp_path):
    source = tiny(num_classes=3)
    save_checkpoint(source, ModelMeta(arch="test_yolo", num_classes=3, img_size=64,
                                      arch_kwargs={"anchors": ANCHORS_64}), tmp_path / "det")
    from edgeres.models import load_weights

    model = tiny(num_classes=5)
    report = load_weights(model, tmp_path / "det")
    assert report.into == "" and sorted(report.reinitialized) == [f"heads.{i}.{p}" for i in range(3)
                                                                 for p in ("bias", "weight")]
    assert torch.equal(model.neck.block5[0][0].weight, source.neck.block5[0][0].weight)


def test_freeze_up_to_a_backbone_stage():
    model = tiny(freeze="backbone.layer2").train()
    frozen = ("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2")
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen)), name
    assert not model.backbone.layer2.training and model.backbone.layer3.training and model.neck.training
    with pytest.raises(UserInputError, match="backbone.layer3"):
        tiny(freeze="layer3")


def test_pruned_detector_reloads_from_its_checkpoint(tmp_path):
    from edgeres.compress.prune import PruneConfig, prune

    model = tiny()
    report = prune(model, (3, 64, 64), PruneConfig(target="macs", amount=0.5, round_to=4))
    assert report.macs_fraction <= 0.5
    assert [report.widths[f"heads.{i}"] for i in range(3)] == [24, 24, 24]  # output convs left alone
    meta = ModelMeta(arch="test_yolo", num_classes=3, img_size=64, arch_kwargs={"anchors": ANCHORS_64})
    save_checkpoint(model, meta, tmp_path / "pruned")
    loaded, meta = load_checkpoint(tmp_path / "pruned")
    assert meta.pruned_shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(loaded.anchors.flatten(), torch.tensor(ANCHORS_64, dtype=torch.float32).flatten())


def _export(module, path, names) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=list(names),
                          dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}})


def test_onnx_export_with_dynamic_batch_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    inference = tiny().eval().inference_module()
    _export(inference, tmp_path / "det.onnx", inference.output_names)
    session = ort.InferenceSession(str(tmp_path / "det.onnx"))
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = inference(x)
        for w, g in zip(want, session.run(None, {"input": x.numpy()})):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_export_with_nms_in_the_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny().eval()
    with torch.no_grad():  # confident objects everywhere: the graph's NMS has work to do
        for head in model.heads:
            head.bias.view(3, 8)[:, 4:6] = torch.tensor([3.0, 2.0])
    inference = model.inference_module({"max_det": 200, "iou": 0.3, "conf": 0.8})
    _export(inference, tmp_path / "nms.onnx", inference.output_names)
    session = ort.InferenceSession(str(tmp_path / "nms.onnx"))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = inference(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 200, 6)
        for w, g in zip(want, got):
            assert 0 < (w[:, 5] >= 0).sum() < 200 and (g[:, 5] >= 0).sum() == (w[:, 5] >= 0).sum()
            # Scores equal to float precision may come out in either order: match rows as sets.
            distance = np.abs(g[:, None] - w[None]).max(-1)
            assert (distance.min(0) < 1e-4).all() and (distance.min(1) < 1e-4).all()
