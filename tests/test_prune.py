import math

import pytest
import torch
from torch import nn

from edgeres.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from edgeres.compress import PruneConfig, prune, sparsify
from edgeres.errors import UserInputError
from edgeres.models import SqueezeExcite, create, list_models

SHAPE = (3, 32, 32)
TINY = list_models("test_*")


def tiny(name: str, **kw) -> nn.Module:
    return create(name, num_classes=10, in_chans=3, **kw)


def shapes(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in (out if isinstance(out, tuple) else (out,))]


def widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_the_sweep_covers_a_variant_of_every_family():
    assert len(TINY) >= 7 and {"test_se_resnet", "test_simam_resnet", "test_asff_resnet", "test_resnet_v2"} <= set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_variant_prunes_to_half_the_macs_and_round_trips(name, tmp_path):
    model = tiny(name)
    fresh = tiny(name)
    report = prune(model, SHAPE, PruneConfig(amount=0.5, round_to=1))

    assert report.macs_after <= 0.5 * report.macs_before
    assert report.achieved == pytest.approx(report.macs_fraction) and report.achieved > 0.25
    assert report.params_after < report.params_before
    model.eval()
    x = torch.randn(2, *SHAPE)
    y = model(x)
    assert shapes(y) == shapes(fresh.eval()(x))  # (2, 10) logits; a detector's three maps

    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.weight.shape[1] == 3, "the stem must keep reading every input channel"
    names, reference = {m: n for n, m in model.named_modules()}, dict(fresh.named_modules())
    for layer in model.prune_ignored():
        for attr in ("out_channels", "out_features"):
            if hasattr(layer, attr):
                assert getattr(layer, attr) == getattr(reference[names[layer]], attr), names[layer]
    for se in (m for m in model.modules() if isinstance(m, SqueezeExcite)):
        assert se.fc1.in_channels == se.fc2.out_channels and se.fc1.out_channels == se.fc2.in_channels >= 1
    assert widths(model) != widths(fresh)

    save_checkpoint(model, ModelMeta(arch=name, num_classes=10, img_size=32), tmp_path / "ck")
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta.pruned_shapes
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)


def test_asff_fusion_width_is_pruned_but_its_level_weights_are_not():
    """torch-pruning couples `level * w[:, i:i+1]` to the level-weight conv unless the broadcast edge is cut."""
    model = tiny("test_asff_resnet")
    prune(model, SHAPE, PruneConfig(target="ratio", amount=0.5, round_to=1))
    fusion = model.fusion
    assert fusion.proj[0][0].out_channels == fusion.proj[1][0].out_channels == model.fc.in_features == 16
    assert fusion.weight_levels.out_channels == 2
    assert model.eval()(torch.randn(1, *SHAPE)).shape == (1, 10)


def _weaken(model: nn.Module, n: int) -> None:
    """Make layer4.0's first n inner channels the weakest by every measure."""
    block = model.layer4[0]
    with torch.no_grad():
        block.conv1.weight[:n] *= 1e-3
        block.bn1.weight[:n] *= 1e-3
        block.conv2.weight[:, :n] *= 1e-3


@pytest.mark.parametrize("importance", ["l1", "l2", "bn"])
def test_importance_removes_the_weakest_channels(importance):
    model = tiny("test_resnet")
    _weaken(model, 32)
    typical = model.layer4[0].conv1.weight[32:].flatten(1).norm(dim=1).min()
    prune(model, SHAPE, PruneConfig(target="ratio", amount=0.5, importance=importance, round_to=1))
    kept = model.layer4[0].conv1.weight.flatten(1).norm(dim=1)
    assert len(kept) == 32 and kept.min() > 0.1 * typical, "a weakened channel survived"


@pytest.mark.parametrize("global_pruning", [False, True])
def test_taylor_importance_takes_gradients_from_calib(global_pruning):
    model = tiny("test_se_resnet")
    calib = ((torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))) for _ in range(2))  # one-shot, two steps
    report = prune(model, SHAPE, PruneConfig(amount=0.5, importance="taylor", global_pruning=global_pruning,
                                             round_to=1, steps=2), calib=calib)
    assert report.achieved <= 0.5
    assert all(p.grad is None for p in model.parameters()), "pruning must not leave calibration gradients behind"
    with pytest.raises(UserInputError, match="calib"):
        prune(tiny("test_resnet"), SHAPE, PruneConfig(importance="taylor"))


def test_global_pruning_reaches_the_budget_with_uneven_widths():
    model = tiny("test_resnet_bottleneck")
    report = prune(model, SHAPE, PruneConfig(amount=0.5, global_pruning=True, round_to=1))
    assert report.achieved <= 0.5
    fresh = widths(tiny("test_resnet_bottleneck"))
    kept = {n: w / fresh[n] for n, w in widths(model).items()}
    assert max(kept.values()) - min(kept.values()) > 0.1, "global ranking should not prune every layer alike"


def test_round_to_keeps_aligned_widths_aligned():
    model = tiny("test_se_resnet")
    before = widths(model)
    report = prune(model, SHAPE, PruneConfig(amount=0.8, round_to=8))
    assert report.achieved <= 0.8
    after = widths(model)
    assert after != before
    for name, width in after.items():
        assert width % math.gcd(before[name], 8) == 0, (name, before[name], width)


def test_unreachable_budget_is_a_user_error_and_leaves_the_model_alone():
    model = tiny("test_resnet")
    before = widths(model)
    with pytest.raises(UserInputError, match="round_to"):
        prune(model, SHAPE, PruneConfig(amount=0.5, round_to=8))  # the 8-wide stem dominates at 32x32
    assert widths(model) == before


def test_steps_call_finetune_between_them_and_frozen_stages_stay_frozen():
    model = tiny("test_resnet", freeze="layer1")
    calls = []

    def finetune(m, step):
        assert m is model and m.training
        calls.append((step, m.layer4[0].conv1.out_channels))

    model.train()
    report = prune(model, SHAPE, PruneConfig(amount=0.5, steps=3, round_to=1), finetune=finetune)
    assert [s for s, _ in calls] == [1, 2] and len(report.step_ratios) == 3
    assert calls[0][1] >= calls[1][1] >= model.layer4[0].conv1.out_channels
    assert report.achieved <= 0.5 and model.training
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer4.parameters())


def test_params_and_ratio_targets():
    model = tiny("test_resnet_v2")
    report = prune(model, SHAPE, PruneConfig(target="params", amount=0.5, round_to=1))
    assert report.achieved == pytest.approx(report.params_fraction) and report.achieved <= 0.5
    model = tiny("test_resnet_v2")
    report = prune(model, SHAPE, PruneConfig(target="ratio", amount=0.25, round_to=1))
    assert 0.25 <= report.achieved < 0.3
    assert report.to_dict()["config"]["target"] == "ratio"


def test_amount_one_prunes_nothing():
    model = tiny("test_resnet")
    report = prune(model, SHAPE, PruneConfig(amount=1.0))
    assert report.achieved == 1.0 and report.step_ratios == [0.0]
    assert widths(model) == widths(tiny("test_resnet"))


@pytest.mark.parametrize("field, value", [
    ("target", "flops"), ("importance", "hessian"), ("amount", 0.0), ("amount", 1.5), ("amount", "half"),
    ("round_to", 0), ("steps", 0), ("steps", 1.5), ("global_pruning", "yes"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserInputError, match=field):
        PruneConfig(**{field: value})
    with pytest.raises(UserInputError, match="ratio"):
        PruneConfig(target="ratio", amount=1.0)


def test_bad_inputs_to_prune():
    with pytest.raises(UserInputError, match="input_shape"):
        prune(tiny("test_resnet"), (3, 32), PruneConfig())
    with pytest.raises(UserInputError, match="prune_ignored"):
        prune(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()), SHAPE, PruneConfig())


def test_sparsify_reports_global_and_per_layer_sparsity():
    model = tiny("test_resnet")
    keys = set(model.state_dict())
    result = sparsify(model, 0.6)
    assert result["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert result["zeros"] == round(0.6 * result["weights"])
    assert set(result["layers"]) == {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert min(result["layers"].values()) < 0.6 < max(result["layers"].values()), "global, not per layer"
    assert "no speed" in result["note"]
    assert set(model.state_dict()) == keys, "masks must be baked in, not left as weight_orig/weight_mask"
    assert model.eval()(torch.randn(1, *SHAPE)).shape == (1, 10)
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(UserInputError, match="sparsity"):
            sparsify(model, bad)
