import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from edgeres import load_checkpoint, save_checkpoint
from edgeres.checkpoint import ModelMeta
from edgeres.errors import UserInputError
from edgeres.models import SimAM, SqueezeExcite, create, list_models, load_weights
from edgeres.models.registry import variant_args

# Every registered model needs an entry; test_registry_fully_covered fails otherwise. The value is the
# model's parameter count at 1000 classes where one is published (torchvision, timm, Keras) or follows from
# published parts (the comment shows the sum); None for the tiny test variants, which get the shape check only.
CASES: dict[str, int | None] = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,  # torchvision
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "se_resnet18": 11_779_624, "se_resnet34": 21_960_416,  # timm seresnet18/34/50/101
    "se_resnet50": 28_088_024, "se_resnet101": 49_326_872,
    "simam_resnet18": 11_689_512, "simam_resnet50": 25_557_032,  # SimAM adds no parameters
    "resnet50v2": 25_568_360,  # Keras ResNet50V2
    # resnet50v2 plus se_resnet50's SE modules (same block widths): 25,568,360 + 2,530,992.
    "se_resnet50v2": 28_099_352,
    # se_resnet50v2 - its fc (2,049,000) + the MRI study's head: a 3x3 conv 2048 -> 512 (9,437,184), its BN (1,024)
    # and a 512-wide fc (513,000).
    "se_resnet50v2_convhead": 36_001_560,
    # resnet50 - its 2048-wide fc (2,049,000) + ASFF of layer3/4 to 512 channels (1,591,426) + a 512-wide fc
    # (513,000). ASFF: 1x1 projections 1024*512 + 2048*512 with BN (2*2*512), 512->16 weight convs with BN
    # (2*(8,192 + 32)), level logits 32*2 + 2.
    "asff_resnet50": 25_612_458,
    "test_resnet": None, "test_resnet_bottleneck": None, "test_se_resnet": None, "test_simam_resnet": None,
    "test_resnet_v2": None, "test_se_resnet_v2": None, "test_se_resnet_v2_convhead": None, "test_asff_resnet": None,
    # Detectors (tests/test_yolo.py checks them): resnet18 without its fc (11,176,512) + the YOLOv3 neck
    # (3,507,840) + three 1x1 heads for 3 anchors * (5 + 1000) outputs from 128/256/512 channels (2,710,485).
    "yolo_resnet18": 17_394_837, "yolo_simam_resnet18": 17_394_837,
    "yolo_se_resnet18": 17_484_949,  # + se_resnet18's SE modules (90,112)
    "test_yolo": None,
    # U-Nets (tests/test_image2image.py checks them; 3 channels in and out whatever the class count): resnet18
    # without its fc (11,176,512) + five decoder blocks of two 3x3 conv-BN from 512+256/256+128/128+64/64+64/32+3
    # inputs to 256/128/64/32/16 (3,151,984) + a 3x3 head to 3 channels (435).
    "unet_resnet18": 14_328_931, "unet_se_resnet18": 14_419_043,  # + se_resnet18's SE modules (90,112)
    # resnet50 without its fc (23,508,032) + the decoder from 2048+1024/256+512/128+256/64+64/32+3 (9,013,360)
    # + the head (435); se: + se_resnet50's SE modules (2,530,992).
    "unet_resnet50": 32_521_827, "unet_se_resnet50": 35_052_819,
    "test_unet": None,
}
TINY = [n for n in CASES if n.startswith("test_")]
DETECTORS = {"yolo_resnet18", "yolo_se_resnet18", "yolo_simam_resnet18", "test_yolo"}
UNETS = {"unet_resnet18", "unet_se_resnet18", "unet_resnet50", "unet_se_resnet50", "test_unet"}
CLASSIFIERS = sorted(set(CASES) - DETECTORS - UNETS)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_fully_covered():
    assert sorted(CASES) == list_models()
    assert all(CASES[n] is not None for n in CASES if n not in TINY), "full-size models state their size"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_shape_grayscale_small_input(name):
    model = create(name, num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(n for n, count in CASES.items() if count is not None))
def test_parameter_counts(name):
    with torch.device("meta"):  # shapes only: counting needs no memory or initialisation
        model = create(name)
    assert n_params(model) == CASES[name]


def test_plain_resnets_match_torchvision_parameter_counts():
    with torch.device("meta"):
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            assert n_params(create(name)) == n_params(getattr(torchvision.models, name)()), name


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_identical_outputs(name, tmp_path):
    reference = getattr(torchvision.models, name)().eval()
    # Non-trivial BN statistics, so a wrongly mapped buffer would show in the outputs.
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create(name, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


# timm's SE hidden width per block width: make_divisible(channels / 16, 8), i.e. 4 rounds up to 8.
TIMM_SE_WIDTH = {64: 8, 128: 8, 256: 16, 512: 32}
TIMM_SERESNETS = {"se_resnet18": (2, 2, 2, 2), "se_resnet34": (3, 4, 6, 3)}


def _timm_seresnet_state(layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of timm's seresnet18/34 state dict (BasicBlock layout)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(key: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        state[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5
        if bias:
            state[f"{key}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def bn(key: str, c: int) -> None:
        state.update({f"{key}.weight": 1 + 0.1 * torch.randn(c, generator=g),
                      f"{key}.bias": 0.1 * torch.randn(c, generator=g),
                      f"{key}.running_mean": 0.1 * torch.randn(c, generator=g),
                      f"{key}.running_var": 0.5 + torch.rand(c, generator=g),
                      f"{key}.num_batches_tracked": torch.tensor(0)})

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, (depth, c) in enumerate(zip(layers, (64, 128, 256, 512)), 1):
        for j in range(depth):
            p = f"layer{i}.{j}"
            conv(f"{p}.conv1", c, cin, 3)
            bn(f"{p}.bn1", c)
            conv(f"{p}.conv2", c, c, 3)
            bn(f"{p}.bn2", c)
            conv(f"{p}.se.fc1", TIMM_SE_WIDTH[c], c, 1, bias=True)
            conv(f"{p}.se.fc2", c, TIMM_SE_WIDTH[c], 1, bias=True)
            if cin != c:
                conv(f"{p}.downsample.0", c, cin, 1)
                bn(f"{p}.downsample.1", c)
            cin = c
    state["fc.weight"] = 0.01 * torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


def _timm_seresnet_forward(state: dict[str, torch.Tensor], layers: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """timm's SE-ResNet forward written out with functional ops: SE after bn2, before the residual add."""
    def bn(t, key):
        return F.batch_norm(t, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                            state[f"{key}.bias"], training=False, eps=1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for i, depth in enumerate(layers, 1):
        for j in range(depth):
            p, stride = f"layer{i}.{j}", (2 if i > 1 and j == 0 else 1)
            out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            squeeze = F.relu(F.conv2d(out.mean((2, 3), keepdim=True), state[f"{p}.se.fc1.weight"],
                                      state[f"{p}.se.fc1.bias"]))
            out = out * torch.sigmoid(F.conv2d(squeeze, state[f"{p}.se.fc2.weight"], state[f"{p}.se.fc2.bias"]))
            if f"{p}.downsample.0.weight" in state:
                x = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("name", sorted(TIMM_SERESNETS))
def test_timm_seresnet_weights_load_and_give_timms_outputs(name, tmp_path):
    layers = TIMM_SERESNETS[name]
    state = _timm_seresnet_state(layers)
    learned = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert learned == CASES[name], "the hand-built state dict has timm's parameter count"
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = create(name, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _timm_seresnet_forward(state, layers, x))


def test_se_hidden_width_is_rounded_like_timm():
    with torch.device("meta"):
        models = {name: create(name) for name in ("se_resnet18", "se_resnet50")}
    widths = {name: [stage[0].se.fc1.out_channels for stage in (m.layer1, m.layer2, m.layer3, m.layer4)]
              for name, m in models.items()}
    assert widths == {"se_resnet18": [8, 8, 16, 32], "se_resnet50": [16, 32, 64, 128]}
    assert SqueezeExcite(40).fc1.out_channels == 8 and SqueezeExcite(200).fc1.out_channels == 16
    with pytest.raises(UserInputError, match="reduction"):
        SqueezeExcite(64, reduction=0)


def test_transfer_learning_reinitialises_classifier(tmp_path):
    source = create("test_resnet", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create("test_resnet", num_classes=4)
    report = load_weights(target, path)
    assert report.reinitialized == ["fc.weight", "fc.bias"]
    assert torch.equal(target.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert target.fc.weight.shape == (4, 64)


def test_rgb_weights_adapt_to_grayscale_stem(tmp_path):
    source = create("test_resnet").eval()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    gray = create("test_resnet", in_chans=1, weights=path).eval()
    x = torch.rand(1, 1, 32, 32)
    # A grey image repeated over RGB must give the same response as the summed stem filter.
    with torch.no_grad():
        torch.testing.assert_close(gray(x), source(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create("test_resnet_bottleneck").state_dict(), path)
    with pytest.raises(UserInputError, match="another architecture|do not fit"):
        create("test_resnet", weights=path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": create("test_resnet")}, path)  # a whole pickled module, not a state dict
    with pytest.raises(UserInputError, match="not a loadable weights file|expected a state dict") as refused:
        create("test_resnet", weights=path)
    # The finding only, not torch's advice to load the file with weights_only=False (which runs its code)
    assert "weights_only" not in str(refused.value) and len(str(refused.value)) < 400


def test_freeze_up_to_stage_keeps_bn_statistics():
    model = create("test_resnet", num_classes=3, freeze="layer3")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3"} for n in frozen)
    assert {n.split(".")[0] for n in trainable} == {"layer4", "fc"}
    model.train()
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.layer2[0].bn1.running_mean, before)
    assert model.layer4.training and not model.layer3.training


def test_unknown_name_lists_close_matches():
    with pytest.raises(UserInputError, match="se_resnet18"):
        create("se_resnet81")
    with pytest.raises(ValueError):  # UserInputError is a ValueError, as the design promises
        create("nope")


def test_unknown_freeze_stage_is_refused():
    with pytest.raises(UserInputError, match="layer4"):
        create("test_resnet", freeze="layer9")


def test_list_models_pattern():
    assert list_models("simam_*") == ["simam_resnet18", "simam_resnet50"]


def _call_order(block: nn.Module, x: torch.Tensor) -> list[str]:
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in block.named_children() if n != "relu"]
    block(x)
    for h in hooks:
        h.remove()
    return order


def test_se_sits_after_last_bn_before_add():
    block = create("se_resnet18").layer1[0]
    assert _call_order(block, torch.randn(1, 64, 8, 8)) == ["conv1", "bn1", "conv2", "bn2", "se"]
    assert block.se.fc1.out_channels == 8  # timm's rounding: 64 / 16 = 4 goes up to a multiple of 8


def test_simam_sits_after_3x3_conv_before_its_bn():
    basic = create("simam_resnet18").layer1[0]
    assert _call_order(basic, torch.randn(1, 64, 8, 8)) == ["conv1", "bn1", "conv2", "attn", "bn2"]
    bottleneck = create("simam_resnet50").layer1[0]
    assert _call_order(bottleneck, torch.randn(1, 64, 8, 8))[:5] == ["downsample", "conv1", "bn1", "conv2", "attn"]


def test_simam_matches_its_formula():
    x = torch.randn(2, 3, 5, 4)
    lam = 1e-3
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / (5 * 4 - 1)
    expected = x * torch.sigmoid((x - mu) ** 2 / (4 * (var + lam)) + 0.5)
    torch.testing.assert_close(SimAM(3, lambda_=lam)(x), expected)
    assert n_params(SimAM(3)) == 0


def test_attention_contract_shape():
    x = torch.randn(2, 32, 7, 7)
    for module in (SqueezeExcite(32), SimAM(32)):
        assert module(x).shape == x.shape


def test_resnet50v2_keras_strides():
    model = create("resnet50v2")
    for stage in ("layer1", "layer2", "layer3"):
        blocks = getattr(model, stage)
        assert [b.conv2.stride[0] for b in blocks] == [1] * (len(blocks) - 1) + [2]
    assert all(b.conv2.stride[0] == 1 for b in model.layer4)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_asff_fuses_two_levels():
    model = create("asff_resnet50", num_classes=2)
    assert model.fusion.weight_levels.out_channels == 2
    assert model.fusion.weight_levels in model.prune_ignored()
    assert variant_args("asff_resnet50")["block"] == "bottleneck"


def test_asff_weights_sum_to_one_per_pixel():
    fusion = create("test_asff_resnet").fusion.eval()
    assert fusion([torch.ones(1, 128, 4, 4), torch.ones(1, 256, 2, 2)]).shape == (1, 32, 2, 2)
    # Without the projections the levels reach the weighting as given, so the output is sum_i w_i * level_i.
    fusion.proj = nn.ModuleList([nn.Identity(), nn.Identity()])
    a, b = torch.randn(2, 32, 3, 3), torch.randn(2, 32, 3, 3)
    with torch.no_grad():
        # Two equal levels come out unchanged only if the weights sum to one at every pixel ...
        torch.testing.assert_close(fusion([a, a]), a)
        # ... and different ones land between them only if no weight is negative.
        mixed = fusion([a, b])
    assert ((mixed >= torch.minimum(a, b) - 1e-6) & (mixed <= torch.maximum(a, b) + 1e-6)).all()
    assert not torch.allclose(mixed, (a + b) / 2), "weights differ per pixel, not a fixed average"


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_round_trip_identical(name, tmp_path):
    model = create(name, num_classes=4, in_chans=1).eval()
    meta = ModelMeta(arch=name, num_classes=4, in_chans=1, img_size=32, class_names=list("abcd"))
    save_checkpoint(model, meta, tmp_path / "ckpt")
    loaded, meta2 = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta2.class_names == list("abcd") and meta2.pruned_shapes is None
    assert not any(p.suffix in {".pt", ".pth", ".pkl"} for p in (tmp_path / "ckpt").iterdir())


def test_checkpoint_with_narrowed_layer_round_trips(tmp_path):
    # A hand-narrowed layer stands in for pruning: the shapes in model.json rebuild it.
    model = create("test_resnet", num_classes=3).eval()
    block = model.layer2[0]
    block.conv1 = nn.Conv2d(8, 8, 3, 2, 1, bias=False)
    block.bn1 = nn.BatchNorm2d(8)
    block.conv2 = nn.Conv2d(8, 16, 3, 1, 1, bias=False)
    model.eval()
    meta = ModelMeta(arch="test_resnet", num_classes=3, img_size=32)
    save_checkpoint(model, meta, tmp_path / "p")
    loaded, meta2 = load_checkpoint(tmp_path / "p")
    assert meta2.pruned_shapes["layer2.0.conv1.weight"] == [8, 8, 3, 3]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="model.safetensors"):
        load_checkpoint(tmp_path)
