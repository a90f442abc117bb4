"""Training for any task (its loss and score come from the task): seeded, resumable, early-stopping, DDP-ready,
CPU or GPU; evaluation through a Runner."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from edgeres import runtime
from edgeres.artifacts import read_json, write_json
from edgeres.checkpoint import META_FILE, ModelMeta, checkpoint_sha256, is_checkpoint, save_checkpoint
from edgeres.data import DataBundle, make_sampler
from edgeres.errors import UserInputError
from edgeres.evaluate.predict import evaluate_runner, write_metrics
from edgeres.meta import DEFAULT_TASK
from edgeres.models import create, model_task
from edgeres.plots import plot_training_curves
from edgeres.tasks import Criterion, LossConfig, Task, get_task
from edgeres.train.config import TrainConfig
from edgeres.train.device import Execution, amp_dtype, placed
from edgeres.train.distributed import DistContext, init_distributed, shutdown
from edgeres.train.state import load_state, save_state
from edgeres.ui import progress_bar

log = logging.getLogger("edgeres")


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool


def _build_optimizer(cfg: TrainConfig, model: nn.Module, criterion: Criterion):
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(criterion, nn.Module):  # e.g. distillation adapters learn alongside the model
        params += [p for p in criterion.parameters() if p.requires_grad]
    if not params:
        raise UserInputError(f"freeze={cfg.freeze!r} leaves no parameter to train")
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas or (0.9, 0.999), weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas or (0.9, 0.999), weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    elif cfg.scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=2)
    else:
        sched = None
    return opt, sched


def _train_loader(cfg: TrainConfig, bundle: DataBundle, ctx: DistContext, epoch: int) -> DataLoader:
    dataset = bundle.dataset("train")
    g = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)
    pin = ctx.device.type == "cuda"  # page-locked batches copy to a GPU asynchronously; a CPU gains nothing
    collate = getattr(bundle, "collate", None)  # tasks whose samples differ in shape batch them their way
    if ctx.enabled:
        if cfg.balance == "sampler":
            raise UserInputError("balance='sampler' is not available under torchrun; use balance='loss'")
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, cfg.batch_size, sampler=sampler, pin_memory=pin, collate_fn=collate)
    if cfg.balance == "sampler":
        return DataLoader(dataset, cfg.batch_size, sampler=make_sampler(bundle.labels("train"),
                          len(bundle.class_names), cfg.seed * 10_007 + epoch), pin_memory=pin, collate_fn=collate)
    return DataLoader(dataset, cfg.batch_size, shuffle=True, generator=g, pin_memory=pin, collate_fn=collate)


def train_epoch(model: nn.Module, loader, optimizer, criterion: Criterion, progress=None,
                execution: Execution = Execution(), scaler: torch.amp.GradScaler | None = None,
                task: Task | None = None) -> tuple[float, float, int]:
    """One pass over `loader`; returns mean loss, the task's metric on the (augmented) batches (None when the
    task scores no single batch), and images seen.

    execution: the device the model (and criterion) sit on, where batches go, and the autocast dtype.
    scaler: fp16 loss scaling kept across epochs (default: a fresh one, as `execution` needs it).
    task: what scores a batch (default: classification's top-1 accuracy).
    """
    scaler = scaler or execution.grad_scaler()  # disabled (a pass-through) unless fp16
    task = task or get_task(DEFAULT_TASK)
    model.train()
    total_loss, score, seen = 0.0, 0.0, 0
    for images, targets in loader:
        images, targets = execution.move(images), execution.move(targets)
        with execution.autocast():
            logits = model(images)
            loss = criterion(logits, targets, images)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(images)
        total_loss += loss.item() * n
        batch_score = task.batch_score(logits, targets)
        score = None if batch_score is None or score is None else score + batch_score
        seen += n
        if progress is not None:  # with the terms of a criterion that reports them (distillation, GAN losses)
            progress(n, loss=loss.item(), **getattr(criterion, "last", {}))
    return total_loss / max(seen, 1), None if score is None else score / max(seen, 1), seen


@torch.no_grad()
def validate(model: nn.Module, bundle: DataBundle, batch_size: int, execution: Execution = Execution(),
             task: Task | None = None) -> tuple[float, float | None]:
    """The task's plain loss and metric on the validation split, un-augmented, where and as the model trains.

    A metric that is no sum over batches (mAP) comes from the split's predictions: the inference module
    (`from_raw`) turns the outputs the loss saw into what evaluation postprocesses, without a second forward.
    """
    task = task or get_task(DEFAULT_TASK)
    model.eval()
    infer = model.inference_module() if hasattr(model, "inference_module") else model
    names = getattr(infer, "output_names", ("logits",))
    total_loss, score, seen = 0.0, 0.0, 0
    labels, predictions = [], []
    for x, y in bundle.batches("val", batch_size):
        images = execution.move(torch.from_numpy(x))
        with execution.autocast():
            logits = model(images)
        target = execution.move(torch.from_numpy(y))
        total_loss += task.loss_sum(logits, target, model).item()
        batch_score = task.batch_score(logits, target)
        if batch_score is None:
            outputs = infer.from_raw(tuple(o.float() for o in logits))
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            predictions.append(task.postprocess({n: o.float().cpu().numpy() for n, o in zip(names, outputs)}))
            labels.append(y)
        else:
            score += batch_score
        seen += len(x)
    if predictions:
        return total_loss / max(seen, 1), task.headline(task.metrics(task.collect(labels, predictions),
                                                                     bundle.class_names))
    return total_loss / max(seen, 1), score / max(seen, 1)


def _prepare_out(cfg: TrainConfig) -> dict[str, Any] | None:
    """Refuse to overwrite a finished run; return the saved state when resuming."""
    out = cfg.out_dir
    if out.exists() and not out.is_dir():  # a checkpoint's model.json too: a run is its folder, not a file in it
        raise UserInputError(f"--out {out} is a file; expected a folder for the training run")
    if cfg.resume:
        state = load_state(out / "last")
        if state is None:
            raise UserInputError(f"--resume: {out} holds no saved training state to continue from")
        saved = read_json(out / "train.json")
        now = json.loads(json.dumps(cfg.to_dict()))  # as JSON holds it: tuples are lists
        before_options = {"betas": None, "loss": dataclasses.asdict(LossConfig())}  # runs saved without them
        for key in ("model", "data", "model_kwargs", "seed", "batch_size", "optimizer", "scheduler", "betas", "loss"):
            if saved.get(key, before_options.get(key)) != now.get(key):
                raise UserInputError(f"--resume: {key} differs from the interrupted run "
                                     f"({saved.get(key)!r} there, {now.get(key)!r} now)")
        return state
    if is_checkpoint(out) or (out / "last").exists():
        raise UserInputError(f"{out} already holds a training run; pass --resume to continue it "
                             "or choose another --out")
    return None


def make_meta(cfg: TrainConfig, bundle: DataBundle, parent: str | None = None, task: str = DEFAULT_TASK,
              arch_kwargs: dict[str, Any] | None = None) -> ModelMeta:
    """model.json of a run; arch_kwargs: what the model was built with (default: the config's model_kwargs)."""
    return ModelMeta(arch=cfg.model, num_classes=len(bundle.class_names), in_chans=bundle.in_chans,
                     arch_kwargs=dict(cfg.model_kwargs if arch_kwargs is None else arch_kwargs), img_size=bundle.img_size, mean=tuple(bundle.mean),
                     std=tuple(bundle.std), class_names=list(bundle.class_names), task=task,
                     data=bundle.config.to_dict(), parent_sha256=parent)


def train(cfg: TrainConfig, model: nn.Module | None = None, criterion: Criterion | None = None,
          meta: ModelMeta | None = None, bundle: DataBundle | None = None) -> TrainResult:
    """Train `cfg.model` (or the given `model`) on `cfg.data` on `cfg.device`; write the best checkpoint and its
    metrics to cfg.out. A given model and criterion are back on the CPU when this returns."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, model, criterion, meta, bundle)
    finally:
        shutdown(ctx)


def _train(cfg, ctx, model, criterion, meta, bundle) -> TrainResult:
    execution = Execution(ctx.device, amp_dtype(ctx.device, cfg.amp))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    state = _prepare_out(cfg) if ctx.is_main or cfg.resume else None
    ctx.barrier()
    # A model from outside the zoo declares no task: it is a classifier, as every model was before tasks.
    task = get_task(meta.task if meta else getattr(model, "task", DEFAULT_TASK) if model else model_task(cfg.model))
    bundle = bundle or task.load_data(cfg.data)
    if bundle.skipped and ctx.is_main:
        log.warning("skipped %d unreadable image(s) or label(s), e.g. %s", len(bundle.skipped), bundle.skipped[0])
    arch_kwargs = dict(cfg.model_kwargs)
    if model is None:
        arch_kwargs = {**task.model_kwargs(bundle), **arch_kwargs}  # e.g. anchors fitted to the training boxes
        model = create(cfg.model, num_classes=len(bundle.class_names), in_chans=bundle.in_chans,
                       weights=cfg.weights, freeze=cfg.freeze, **arch_kwargs)
    parent = checkpoint_sha256(cfg.weights) if cfg.weights and is_checkpoint(cfg.weights) else None
    meta = meta or make_meta(cfg, bundle, parent, task.name, arch_kwargs)
    criterion = criterion or task.criterion(bundle, execution.device, model=model,
                                            label_smoothing=cfg.label_smoothing, class_weighted=cfg.balance == "loss",
                                            loss=cfg.loss)
    # Weights are created (and saved) on the CPU; only the epochs run on the device.
    with placed(execution, model, criterion if isinstance(criterion, nn.Module) else None):
        history, best, stopped_early = _fit(cfg, ctx, execution, model, criterion, meta, bundle, state)
    ctx.barrier()
    metrics = finalize_run(cfg.out_dir, history, bundle) if ctx.is_main else {}
    return TrainResult(cfg.out_dir, metrics, history, best["epoch"], stopped_early)


def _restore(state: dict[str, Any], model: nn.Module, optimizer, scheduler, criterion: Criterion,
             scaler: torch.amp.GradScaler) -> tuple[list, dict, int, int]:
    """Load an interrupted run's weights and optimizer state (onto the model's device); return where it was."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if isinstance(criterion, nn.Module) and state.get("criterion"):
        criterion.load_state_dict(state["criterion"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state["history"], state["best"], state["bad_epochs"], state["epoch"] + 1


def _fit(cfg: TrainConfig, ctx: DistContext, execution: Execution, model: nn.Module, criterion: Criterion,
         meta: ModelMeta, bundle: DataBundle, state: dict[str, Any] | None) -> tuple[list, dict, bool]:
    """The epochs, with `model` and `criterion` already on `execution.device`; returns history, best, stopped early."""
    task = get_task(meta.task)
    optimizer, scheduler = _build_optimizer(cfg, model, criterion)
    scaler = execution.grad_scaler()
    history: list[dict[str, Any]] = []
    best = {"val_loss": math.inf, "epoch": -1}
    start, bad_epochs = 0, 0
    if state is not None:
        history, best, bad_epochs, start = _restore(state, model, optimizer, scheduler, criterion, scaler)
        log.info("resuming %s at epoch %d/%d", cfg.out, start + 1, cfg.epochs)
    if ctx.is_main:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(cfg.out_dir / "train.json", {**cfg.to_dict(), "world_size": ctx.world_size,
                                                "execution": execution.to_dict()})
    net = ctx.wrap(model)
    stopped_early = False
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 10_007 + epoch)  # augmentation draws depend on the epoch alone: resume is exact
        loader = _train_loader(cfg, bundle, ctx, epoch)
        with progress_bar(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader.sampler),
                          enabled=ctx.is_main) as advance:
            train_loss, train_score, seen = train_epoch(net, loader, optimizer, criterion, advance, execution, scaler,
                                                        task)
        train_loss = ctx.all_reduce_mean(train_loss)
        train_score = None if train_score is None else ctx.all_reduce_mean(train_score)
        val_loss, val_score = validate(model, bundle, max(cfg.batch_size, 128), execution, task)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": train_loss, f"train_{task.metric}": train_score,
               "val_loss": val_loss, f"val_{task.metric}": val_score, "lr": lr, "samples_per_process": seen,
               "seconds": round(time.perf_counter() - t0, 3)}
        row = {k: v for k, v in row.items() if v is not None}
        history.append(row)
        improved = val_loss < best["val_loss"]
        if improved:
            best, bad_epochs = {"val_loss": val_loss, "epoch": epoch + 1}, 0
        else:
            bad_epochs += 1
        if ctx.is_main:
            log.info("epoch %d/%d  train loss %.4f%s  val loss %.4f%s  lr %.2e  %.1fs%s",
                     epoch + 1, cfg.epochs, train_loss, _score(task, train_score), val_loss, _score(task, val_score),
                     lr, row["seconds"], "  *best" if improved else "")
            if improved:
                meta.history = {"best_epoch": epoch + 1, "epochs": history}
                save_checkpoint(model, meta, cfg.out_dir)  # copies the weights to the CPU
            save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "criterion": criterion.state_dict() if isinstance(criterion, nn.Module) else None,
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "history": history, "best": best, "bad_epochs": bad_epochs, "epoch": epoch},
                       cfg.out_dir / "last")
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped_early = True
            log.info("early stop: val loss has not improved for %d epochs", bad_epochs)
            break
    return history, best, stopped_early


def _score(task: Task, value: float | None) -> str:
    return "" if value is None else f" {task.metric} {value:.4f}"


def finalize_run(out_dir: Path, history: list[dict[str, Any]], bundle: DataBundle) -> dict[str, Any]:
    """Evaluate the best checkpoint through the same Runner `edgeres eval` uses; record metrics and plots."""
    runner = runtime.load(out_dir, backend="torch")
    task = get_task(runner.meta.task)
    metrics, predictions = evaluate_runner(runner, bundle)
    write_metrics(metrics, runner.info.to_dict(), out_dir, bundle.class_names, task,
                  examples=(bundle, predictions.get("test")), data=runner.meta.data)
    if history:
        plot_training_curves(history, out_dir / "curves.png", task.metric)
    write_json(out_dir / "history.json", history)
    meta = read_json(out_dir / META_FILE)
    meta["metrics"] = {split: {**task.summary(m), "n": m["n"]} for split, m in metrics.items()}
    write_json(out_dir / META_FILE, meta)
    return metrics

