"""Where training runs (--device, --amp, torchrun's GPUs) and the training configs' range checks."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import edgeres.train.device as device_module
from edgeres.artifacts import read_json
from edgeres.checkpoint import load_checkpoint
from edgeres.compress.distill import Distiller
from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.compress.prune import PruneConfig
from edgeres.compress.qat import QATConfig, quantization_aware_training
from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.models import create
from edgeres.pipeline import run_recipe
from edgeres.recipe import load_recipe
from edgeres.train.config import TrainConfig
from edgeres.train.device import Execution, amp_dtype, cpu_has_native_bf16, resolve_device
from edgeres.train.distributed import DistContext, init_distributed
from edgeres.train.loop import train, train_epoch

NO_GPU = "no CUDA device on this machine"

DATA = DataConfig(source="digits", img_size=16)


def _train_config(**kw):
    return TrainConfig(**{"model": "test_resnet", "data": DATA, "out": "unused", **kw})


@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3),
    ("weight_decay", -1e-4), ("weight_decay", math.nan), ("weight_decay", math.inf),
    ("threads", 0), ("threads", -2), ("threads", 1.5),
    ("epochs", 0), ("epochs", True), ("batch_size", 2.0), ("patience", -1),
    ("label_smoothing", math.nan), ("label_smoothing", 1.0), ("seed", -1),
    ("device", "gpu"), ("device", "cuda:"), ("device", "cuda:-1"), ("device", "CUDA"), ("amp", "yes"),
])
def test_train_config_refuses_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(UserInputError, match=rf"^{field} must be"):
        _train_config(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("lr", math.nan), ("lr", 0.0), ("batch_size", 0), ("epochs", -1), ("step_epochs", 1.5),
    ("temperature", 0.0), ("temperature", math.inf), ("alpha", 1.5), ("alpha", math.nan),
    ("feature_weight", -0.1), ("feature_weight", math.inf), ("seed", -1), ("device", "tpu"), ("amp", 1),
])
def test_finetune_config_refuses_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(UserInputError, match=rf"^{field} must be"):
        FinetuneConfig(**{field: value})


@pytest.mark.parametrize("value", ["gpu", "cuda:x", ""])
def test_qat_config_refuses_unknown_device(value):
    with pytest.raises(UserInputError, match=r"^device must be one of auto, cpu, cuda or cuda:N"):
        QATConfig(device=value)


def test_good_configs_are_accepted():
    assert _train_config(device="cuda:1", amp=True, threads=2, weight_decay=0.0).device == "cuda:1"
    assert FinetuneConfig(device="cpu", amp=True, alpha=1.0).alpha == 1.0
    assert QATConfig(device="cuda").device == "cuda"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeres.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_train_refuses_inf_lr_and_zero_threads_with_exit_2(tmp_path):
    common = ("train", "--model", "test_resnet", "--data", "digits", "--img-size", "16")
    inf_lr = _cli(*common, "--out", str(tmp_path / "a"), "--lr", "inf")
    zero_threads = _cli(*common, "--out", str(tmp_path / "b"), "--threads", "0")
    assert inf_lr.returncode == 2 and "lr must be a finite number > 0" in inf_lr.stderr
    assert zero_threads.returncode == 2 and "threads must be an integer >= 1" in zero_threads.stderr
    assert "Traceback" not in inf_lr.stderr + zero_threads.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture
def gpus(monkeypatch):
    """Stand in for a machine with `n` CUDA devices (only the queries; nothing runs on them)."""
    def have(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return have


def test_auto_means_a_gpu_when_there_is_one(gpus):
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(gpus, spec):
    gpus(0)
    with pytest.raises(UserInputError, match="no CUDA device is available"):
        resolve_device(spec)


def test_cuda_index_beyond_the_devices_names_the_count(gpus):
    gpus(2)
    with pytest.raises(UserInputError, match=r"cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_under_torchrun_each_process_takes_cuda_local_rank(gpus):
    gpus(2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(UserInputError, match="LOCAL_RANK 2: this machine has 2 CUDA device"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(UserInputError, match="each process trains on cuda:LOCAL_RANK"):
        resolve_device("cuda:0", local_rank=1)


@pytest.fixture
def torchrun_env(monkeypatch):
    """Rank 1 of 2 as torchrun describes it; the process group is recorded, not joined."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", torch.device(d)))
    return calls


def test_torchrun_on_gpus_uses_nccl_on_each_process_own_gpu(gpus, torchrun_env):
    gpus(2)
    ctx = init_distributed("auto")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device) == (1, 2, 1, torch.device("cuda", 1))
    assert torchrun_env == {"set_device": torch.device("cuda", 1), "backend": "nccl"}


def test_torchrun_with_device_cpu_uses_gloo_even_beside_gpus(gpus, torchrun_env):
    gpus(2)
    ctx = init_distributed("cpu")
    assert ctx.device == torch.device("cpu") and torchrun_env == {"backend": "gloo"}


def test_ddp_wraps_a_gpu_model_on_its_own_device_only(monkeypatch):
    made = []
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda model, **kw: made.append(kw) or model)
    model = nn.Linear(2, 2)
    DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1)).wrap(model)
    DistContext(rank=1, world_size=2, local_rank=1).wrap(model)
    assert [kw["device_ids"] for kw in made] == [[1], None]


def test_amp_picks_bf16_or_fp16_with_loss_scaling_on_a_gpu(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert amp_dtype(cuda, True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_dtype(cuda, True) == torch.float16
    assert amp_dtype(cuda, False) is None


def test_amp_on_a_cpu_is_bf16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype(cpu, True) == torch.bfloat16
    assert not Execution(cpu, torch.bfloat16).grad_scaler().is_enabled(), "bf16 has fp32's range: no loss scaling"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UserInputError, match="--amp on the CPU needs native bf16"):
        amp_dtype(cpu, True)
    assert amp_dtype(cpu, False) is None


def test_amp_auto_is_bf16_where_native_and_fp32_elsewhere(monkeypatch):
    """A recipe's `amp: auto` runs on every CPU: mixed precision where native, plain fp32 instead of a refusal."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype(cpu, "auto") == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert amp_dtype(cpu, "auto") is None
    from edgeres.data import DataConfig
    from edgeres.train.config import TrainConfig

    with pytest.raises(UserInputError, match="amp must be true, false or 'auto'"):
        TrainConfig(model="test_resnet", data=DataConfig("digits"), out="x", amp="sometimes")


def _dtypes_seen(execution):
    """Train one step of a tiny model and return the dtype its first convolution computed in."""
    model = create("test_resnet", num_classes=10, in_chans=1)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss, _, _ = train_epoch(model, batch, optimizer, lambda lg, t, x: nn.functional.cross_entropy(lg, t),
                             execution=execution)
    assert math.isfinite(loss)
    return seen, {p.dtype for p in model.parameters()}


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_amp_on_the_cpu_computes_in_bf16_and_keeps_fp32_weights():
    assert _dtypes_seen(Execution(torch.device("cpu"), torch.bfloat16)) == ([torch.bfloat16], {torch.float32})
    assert _dtypes_seen(Execution()) == ([torch.float32], {torch.float32})


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_train_with_amp_on_the_cpu_records_bf16_and_saves_fp32(tmp_path):
    result = train(_train_config(out=str(tmp_path / "amp"), epochs=1, lr=3e-3, threads=1, device="cpu", amp=True))
    assert read_json(tmp_path / "amp" / "train.json")["execution"] == {"device": "cpu", "amp": "bf16"}
    model, _ = load_checkpoint(tmp_path / "amp")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert result.metrics["test"]["accuracy"] > 0.2, "one bf16 epoch on digits should beat chance (0.1)"


def test_distiller_moves_its_teacher_with_it():
    teacher, student = create("test_resnet", num_classes=10), create("test_resnet", num_classes=10)
    distiller = Distiller(teacher, student, feature_weight=1.0, input_shape=(3, 16, 16))
    distiller.to(torch.float64)  # a dtype stands in for a device: both travel through nn.Module._apply
    assert {p.dtype for p in teacher.parameters()} == {torch.float64}
    assert {p.dtype for p in distiller.adapters.parameters()} == {torch.float64}
    assert {p.dtype for p in student.parameters()} == {torch.float32}, "the student is the trainer's to move"
    distiller.close()


def test_cli_train_on_a_missing_gpu_exits_2_before_writing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    res = _cli("train", "--model", "test_resnet", "--data", "digits", "--out", str(tmp_path / "a"),
               "--device", "cuda:1")
    assert res.returncode == 2 and "no CUDA device is available" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists()


def test_prune_and_qat_refuse_a_missing_gpu_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(UserInputError, match="no CUDA device is available"):
        compress_checkpoint(tmp_path / "nothing-here", tmp_path / "p", PruneConfig(amount=0.5),
                            FinetuneConfig(epochs=1, device="cuda"))
    with pytest.raises(UserInputError, match="no CUDA device is available"):
        quantization_aware_training(tmp_path / "nothing-here", tmp_path / "q", QATConfig(device="cuda"))
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: dev\ndata: {source: digits, img_size: 16}\n" + text)
    return load_recipe(path)


def test_recipe_device_is_validated_and_reaches_training(tmp_path):
    with pytest.raises(UserInputError, match="train.device"):
        _recipe(tmp_path, "train: {model: test_resnet, device: gpu}\n")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    recipe = _recipe(tmp_path, "train: {model: test_resnet, device: cuda}\n")
    with pytest.raises(UserInputError, match="no CUDA device is available"):
        run_recipe(recipe, out=tmp_path / "run")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_gpu_training_and_distilled_pruning_run_on_cuda(tmp_path):
    out = tmp_path / "gpu"
    train(_train_config(out=str(out), epochs=2, lr=3e-3, device="cuda", amp=True))
    execution = read_json(out / "train.json")["execution"]
    assert execution["device"] == "cuda:0" and execution["amp"] in ("bf16", "fp16")
    model, _ = load_checkpoint(out)
    assert next(model.parameters()).device.type == "cpu"
    assert read_json(out / "metrics.json")["test"]["accuracy"] > 0.3
    summary = compress_checkpoint(out, tmp_path / "pruned", PruneConfig(amount=0.5, steps=2),
                                  FinetuneConfig(epochs=1, teacher=str(out), device="cuda", amp=True))
    assert read_json(tmp_path / "pruned" / "train.json")["execution"]["device"] == "cuda:0"
    assert summary["after"]["macs"] < summary["before"]["macs"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP on GPUs needs 2 CUDA devices on this machine")
def test_torchrun_nccl_on_two_gpus(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "edgeres.cli", "train",
                          "--model", "test_resnet", "--data", "digits", "--img-size", "16", "--epochs", "1",
                          "--device", "cuda", "--out", str(out)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "train.json")["execution"]["device"] == "cuda:0"  # rank 0 writes it
    assert read_json(out / "history.json")[0]["samples_per_process"] == 540
