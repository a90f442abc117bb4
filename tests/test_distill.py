import copy

import pytest
import torch
import torch.nn.functional as F

from edgeres.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from edgeres.compress import Distiller, PruneConfig, kd_loss, load_teacher, prune
from edgeres.data import DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.models import create
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train

SHAPE = (3, 32, 32)


def tiny(name: str = "test_resnet") -> torch.nn.Module:
    return create(name, num_classes=10, in_chans=3)


def batch(n: int = 4):
    return torch.randn(n, *SHAPE), torch.randint(0, 10, (n,))


def test_kd_loss_is_temperature_scaled_kl_and_zero_for_equal_logits():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    for temp in (1.0, 4.0):
        p_t = F.softmax(t / temp, dim=1)
        manual = (p_t * (p_t.log() - F.log_softmax(s / temp, dim=1))).sum(1).mean() * temp**2
        torch.testing.assert_close(kd_loss(s, t, temp), manual)
    assert kd_loss(t, t, 4.0).abs() < 1e-6
    assert kd_loss(s, t, 4.0) > 0


def test_alpha_one_is_plain_cross_entropy_and_alpha_zero_is_pure_kd():
    teacher, student = tiny().eval(), tiny("test_se_resnet").eval()
    x, y = batch()
    logits = student(x)
    with Distiller(teacher, student, alpha=1.0) as ce_only:
        torch.testing.assert_close(ce_only(logits, y, x), F.cross_entropy(logits, y))
    with Distiller(teacher, student, alpha=0.0, temperature=2.0) as kd_only:
        with torch.no_grad():
            expected = kd_loss(logits, teacher(x), 2.0)
        torch.testing.assert_close(kd_only(logits, y, x), expected)
    mixed = Distiller(teacher, student, alpha=0.7)
    loss = mixed(logits, y, x)
    torch.testing.assert_close(loss, torch.tensor(0.7 * mixed.last["ce"] + 0.3 * mixed.last["kd"]))


def test_kd_term_vanishes_when_the_student_is_the_teacher():
    teacher = tiny().eval()
    student = copy.deepcopy(teacher)
    x, y = batch()
    crit = Distiller(teacher, student, alpha=0.5)
    crit(student(x), y, x)
    assert abs(crit.last["kd"]) < 1e-6


def test_teacher_stays_frozen_in_eval_mode_and_is_not_a_parameter():
    teacher, student = tiny(), tiny("test_se_resnet")
    teacher.train()
    crit = Distiller(teacher, student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert list(crit.parameters()) == []
    teacher.train()
    x, y = batch()
    crit(student(x), y, x).backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_feature_adapters_map_student_widths_to_teacher_widths_and_learn():
    # The pre-activation teacher downsamples at the end of each stage, the student at its start:
    # the stage maps differ in size as well as width.
    teacher, student = tiny("test_resnet_v2"), tiny("test_resnet")
    crit = Distiller(teacher, student, feature_weight=1.0, input_shape=SHAPE)
    shapes = {name: tuple(a.weight.shape) for name, a in crit.adapters.items()}
    assert shapes == {"layer1": (32, 8, 1, 1), "layer2": (64, 16, 1, 1), "layer3": (128, 32, 1, 1),
                      "layer4": (256, 64, 1, 1)}
    assert {id(p) for p in crit.parameters()} == {id(a.weight) for a in crit.adapters.values()}
    x, y = batch()
    student.train()
    loss = crit(student(x), y, x)
    assert crit.last["feature"] > 0
    loss.backward()
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in crit.adapters.values())
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0
    crit.close()
    assert not student.layer1._forward_hooks and not teacher.layer4._forward_hooks


def test_feature_distillation_into_a_pruned_student():
    teacher = tiny("test_se_resnet").eval()
    student = copy.deepcopy(teacher)
    prune(student, SHAPE, PruneConfig(amount=0.5, round_to=1))
    crit = Distiller(teacher, student, feature_weight=0.5, feature_stages=("layer3", "layer4"))
    assert crit.adapters["layer4"].weight.shape[:2] == (64, student.layer4[0].conv2.out_channels)
    x, y = batch()
    student.train()
    crit(student(x), y, x).backward()
    crit.close()


def test_bad_distiller_arguments():
    teacher, student = tiny(), tiny()
    for kwargs, field in [({"alpha": 1.5}, "alpha"), ({"temperature": 0}, "temperature"),
                          ({"feature_weight": -1}, "feature_weight"),
                          ({"feature_weight": 1.0, "feature_stages": ("layer9",)}, "layer9")]:
        with pytest.raises(UserInputError, match=field):
            Distiller(teacher, student, **kwargs)
    other = create("test_resnet", num_classes=5)
    x, y = batch()
    with pytest.raises(UserInputError, match="classes"):
        Distiller(other, student)(student.eval()(x), y, x)


def test_load_teacher_checks_it_fits_the_student(tmp_path):
    model = tiny()
    meta = ModelMeta(arch="test_resnet", num_classes=10, img_size=32, class_names=[str(i) for i in range(10)])
    save_checkpoint(model, meta, tmp_path / "t")
    teacher = load_teacher(tmp_path / "t", ModelMeta(arch="test_se_resnet", num_classes=10, img_size=32))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(teacher(x), model.eval()(x), rtol=0, atol=0)
    for wrong, what in [(dict(num_classes=5), "classes"), (dict(in_chans=1), "input channels"),
                        (dict(class_names=list("abcdefghij")), "class names"), (dict(mean=(0.5,) * 3), "mean")]:
        student = ModelMeta(**{**dict(arch="test_resnet", num_classes=10, img_size=32), **wrong})
        with pytest.raises(UserInputError, match=what):
            load_teacher(tmp_path / "t", student)


def test_prune_then_distill_one_epoch_end_to_end(tmp_path):
    data = DataConfig(source="digits", img_size=16)
    bundle = load_data(data)
    classes, chans = len(bundle.class_names), bundle.in_chans
    teacher = create("test_se_resnet", num_classes=classes, in_chans=chans).eval()
    student = copy.deepcopy(teacher)
    report = prune(student, (chans, 16, 16), PruneConfig(amount=0.5, round_to=1))
    assert report.achieved <= 0.5
    crit = Distiller(teacher, student, feature_weight=0.1, input_shape=(chans, 16, 16))
    adapter_before = crit.adapters["layer4"].weight.detach().clone()
    cfg = TrainConfig(model="test_se_resnet", data=data, out=str(tmp_path / "b"), epochs=1, batch_size=64,
                      lr=3e-3, threads=1)
    result = train(cfg, model=student, criterion=crit, bundle=bundle)
    crit.close()
    assert len(result.history) == 1 and result.metrics["test"]["n"] > 0
    assert not torch.equal(crit.adapters["layer4"].weight, adapter_before), "the optimizer must train the adapters"
    loaded, meta = load_checkpoint(result.out_dir)
    assert meta.pruned_shapes
    x = torch.randn(2, chans, 16, 16)
    torch.testing.assert_close(loaded(x), student.eval()(x), rtol=0, atol=0)
