"""Structured channel pruning to a MACs, parameter or channel budget, on torch-pruning's dependency graph."""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.bench.profile import count_macs, count_params
from edgeres.errors import UserInputError

TARGETS = ("macs", "params", "ratio", "latency")
IMPORTANCES = ("l1", "l2", "bn", "taylor")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune to and how to rank channels."""

    target: str = "macs"          # "macs" | "params" | "ratio"
    amount: float = 0.5           # keep this fraction of MACs/params, or remove this channel ratio for "ratio"
    importance: str = "l2"        # l1 | l2 | bn | taylor
    global_pruning: bool = False  # rank channels across layers instead of the same ratio in every layer
    round_to: int = 8             # pruned widths stay multiples of this where the original width was one
    steps: int = 1                # prune in this many steps, calling `finetune` between them
    # target "latency": a roofline of the runtime, {"ops_per_s", "bytes_per_s", "overhead_s", "element_bytes"};
    # each conv/linear layer costs max(2 MACs / ops_per_s, bytes moved / bytes_per_s) + overhead_s, and
    # `amount` is the fraction of the unpruned model's estimated latency to keep. With global_pruning a
    # channel's importance is divided by the latency its removal saves, so expensive channels go first.
    roofline: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UserInputError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        if self.importance not in IMPORTANCES:
            raise UserInputError(f"importance must be one of {list(IMPORTANCES)}, got {self.importance!r}")
        amount = self.amount
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
            raise UserInputError(f"amount must be a number, got {amount!r}")
        if self.target == "ratio" and not 0 <= amount < 1:
            raise UserInputError(f"amount for target 'ratio' is the channel fraction to remove, in [0, 1); "
                                 f"got {amount}")
        if self.target != "ratio" and not 0 < amount <= 1:
            raise UserInputError(f"amount for target {self.target!r} is the fraction to keep, in (0, 1]; got {amount}")
        for name in ("round_to", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.global_pruning, bool):
            raise UserInputError(f"global_pruning must be true or false, got {self.global_pruning!r}")
        if (self.target == "latency") != (self.roofline is not None):
            raise UserInputError("target 'latency' needs a roofline (ops_per_s, bytes_per_s, overhead_s, "
                                 "element_bytes), and a roofline is only used by target 'latency'")
        if self.roofline is not None:
            keys = ("ops_per_s", "bytes_per_s", "overhead_s", "element_bytes")
            bad = [k for k in keys if not isinstance(self.roofline.get(k), (int, float))
                   or isinstance(self.roofline.get(k), bool) or not self.roofline[k] >= 0]
            if bad or not self.roofline["ops_per_s"] > 0 or not self.roofline["bytes_per_s"] > 0:
                raise UserInputError(f"roofline needs positive numbers for {list(keys)}; got {self.roofline!r}")


@dataclasses.dataclass
class PruneReport:
    """Figures before and after pruning. `achieved` measures what `config.target` names."""

    config: PruneConfig
    input_shape: tuple[int, int, int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    achieved: float               # kept MACs or params fraction; removed channel fraction for "ratio"
    step_ratios: list[float]      # channel ratio pruned at each step, relative to that step's widths
    widths: dict[str, int]        # output channels of every conv and linear layer after pruning

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def params_fraction(self) -> float:
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(input_shape=list(self.input_shape), macs_fraction=self.macs_fraction,
                 params_fraction=self.params_fraction)
        return d


def prune(model: nn.Module, input_shape: tuple[int, int, int], config: PruneConfig, *,
          calib: Batches | None = None, finetune: Callable[[nn.Module, int], None] | None = None,
          loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None) -> PruneReport:
    """Prune `model`'s channels in place until it meets `config`'s budget.

    calib: (images, targets) batches; taylor importance takes its gradients from them.
    loss: loss(outputs, targets) those gradients come from, the model's task's (default: cross-entropy).
    finetune: called as finetune(model, step) after every step but the last.
    """
    input_shape = _check_shape(input_shape)
    if not hasattr(model, "prune_ignored"):
        raise UserInputError(f"{type(model).__name__} does not declare prune_ignored(); "
                             "pruning needs to know which layers' outputs to keep")
    if config.importance == "taylor" and calib is None:
        raise UserInputError("importance 'taylor' needs calib batches to take gradients from")
    if calib is not None and iter(calib) is calib:
        calib = list(calib)  # a one-shot iterator would be empty at the second step
    was_training = model.training
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        before = (count_params(model), count_macs(model, input_shape), _channels(model),
                  estimated_latency(model, input_shape, config.roofline) if config.roofline else None)
    except RuntimeError as e:
        raise UserInputError(f"input_shape {input_shape} does not fit the model: {e}") from e
    ratios: list[float] = []
    units: dict[str, int] = {}  # width granularity per group, from the original widths
    for step in range(1, config.steps + 1):
        ratios.append(_prune_step(model, input_shape, config, step, before, calib, units, loss or F.cross_entropy))
        # torch-pruning rebuilds pruned tensors as fresh Parameters: frozen stages would thaw.
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, True))
        if finetune is not None and step < config.steps:
            model.train(was_training)
            finetune(model, step)
    model.train(was_training)
    params, macs = count_params(model), count_macs(model, input_shape)
    achieved = {"macs": lambda: macs / before[1], "params": lambda: params / before[0],
                "ratio": lambda: 1 - _channels(model) / before[2],
                "latency": lambda: estimated_latency(model, input_shape, config.roofline) / before[3]}[config.target]()
    widths = {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
              for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return PruneReport(config, input_shape, before[0], params, before[1], macs, achieved, ratios, widths)


def _check_shape(shape: Any) -> tuple[int, int, int]:
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise UserInputError(f"input_shape must be (channels, height, width) positive integers, got {shape!r}")
    return tuple(shape)


def _channels(model: nn.Module) -> int:
    """Output channels of the layers pruning may touch: the 'ratio' target counts these."""
    ignored = {id(m) for layer in model.prune_ignored() for m in layer.modules()}
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in ignored)


def _prune_step(model: nn.Module, input_shape: tuple[int, int, int], config: PruneConfig, step: int,
                before: tuple, calib: Batches | None, units: dict[str, int],
                loss: Callable[[Any, torch.Tensor], torch.Tensor]) -> float:
    """One pruning step: rank channels once, find the channel ratio for this step's goal, prune."""
    if config.importance == "taylor":
        _accumulate_grads(model, calib, loss)
    graph = _graph(model, input_shape)
    scores = _scores(model, graph, config, units)
    model.zero_grad(set_to_none=True)
    if config.target == "ratio":
        done, goal = config.amount * (step - 1) / config.steps, config.amount * step / config.steps
        ratio = 1 - (1 - goal) / (1 - done)
    else:
        reference = {"macs": before[1], "params": before[0], "latency": before[3]}[config.target]
        goal = reference * (1 - (1 - config.amount) * step / config.steps)
        cost = (_LatencyCost(model, graph, scores, input_shape, config.roofline) if config.target == "latency"
                else _WidthCost(model, graph, scores, input_shape, config.target))
        if config.target == "latency" and config.global_pruning:
            scores = _per_latency(scores, cost)
        ratio = _budget_ratio(model, scores, input_shape, config, goal, reference, cost)
    _apply(model, graph, _plan(scores, ratio, config.global_pruning))
    return ratio


def _per_latency(scores: list[tuple[str, torch.Tensor, int]], cost: "_LatencyCost") -> list[tuple[str, torch.Tensor, int]]:
    """Importance per unit of latency: each group's (normalised) importance divided by what removing one of
    its channels saves on the roofline, relative to the mean saving over groups. A wide layer that moves much
    data for few MACs then gives channels before a narrow, compute-bound one of equal importance."""
    full = cost({})
    savings = [max(full - cost({name: [0]}), 0.0) for name, _, _ in scores]
    mean = sum(savings) / len(savings) if savings else 0.0
    if mean <= 0:
        return scores
    return [(name, imp / max(saving / mean, 1e-3), unit) for (name, imp, unit), saving in zip(scores, savings)]


def _budget_ratio(model: nn.Module, scores: list, input_shape: tuple[int, int, int], config: PruneConfig, goal: float,
                  reference: float, estimate: "_WidthCost") -> float:
    """The smallest channel ratio that brings the model's MACs, params or estimated latency down to `goal`."""
    candidates = _candidates(scores, config.global_pruning)

    def cost(i: int) -> float:
        return estimate(_plan(scores, candidates[i], config.global_pruning))

    lowest = cost(len(candidates) - 1)  # every group at its minimum width: the same floor at every step
    if lowest > reference * config.amount:
        raise UserInputError(
            f"cannot reach {config.target} {config.amount:g}: pruning every layer to its minimum width keeps "
            f"{lowest / reference:.3f} of the {config.target} (round_to={config.round_to}); "
            f"lower round_to or raise the amount")
    lo, hi = -1, len(candidates) - 1  # cost(lo) > goal >= cost(hi); cost falls as the ratio grows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost(mid) <= goal else (mid, hi)
    if config.target == "latency":  # the roofline over widths is the measure itself
        return candidates[hi]
    # The estimate sees conv, linear and norm widths only: confirm on a pruned copy, step on if it missed.
    measure = count_macs if config.target == "macs" else (lambda m, _: count_params(m))
    for i in range(hi, len(candidates)):
        trial = copy.deepcopy(model)
        _apply(trial, _graph(trial, input_shape), _plan(scores, candidates[i], config.global_pruning))
        if measure(trial, input_shape) <= goal:
            return candidates[i]
    raise UserInputError(f"cannot reach {config.target} {config.amount:g} with round_to={config.round_to}")


class _WidthCost:
    """MACs or parameters after a plan, computed from layer widths: no copy and no forward pass per guess."""

    def __init__(self, model: nn.Module, graph, scores: list, input_shape: tuple[int, int, int], target: str):
        self.terms = _width_terms(model, input_shape, target)
        measured = count_macs(model, input_shape) if target == "macs" else count_params(model)
        self.other = measured - self._total({})  # work the width terms do not see: zero in the zoo
        self.couplings = _couplings(model, graph, scores)

    def __call__(self, plan: dict[str, list[int]]) -> float:
        removed: dict[tuple[str, int], int] = {}
        for root, idxs in plan.items():
            width, coupled = self.couplings[root]
            mask = torch.zeros(width, dtype=torch.bool)
            mask[idxs] = True
            for key, roots in coupled:
                removed[key] = removed.get(key, 0) + int(mask[roots].sum())
        return self.other + self._total(removed)

    def _total(self, removed: dict[tuple[str, int], int]) -> float:
        total = 0.0
        for name, (out, inp, per_pair, per_out) in self.terms.items():
            out, inp = out - removed.get((name, 0), 0), inp - removed.get((name, 1), 0)
            total += out * inp * per_pair + out * per_out
        return total


class _LatencyCost(_WidthCost):
    """Estimated latency (seconds) after a plan: every conv and linear layer on the roofline at its new widths."""

    def __init__(self, model: nn.Module, graph, scores: list, input_shape: tuple[int, int, int],
                 roofline: dict[str, float]):
        self.terms, self.roofline, self.other = _latency_terms(model, input_shape), roofline, 0.0
        self.couplings = _couplings(model, graph, scores)

    def _total(self, removed: dict[tuple[str, int], int]) -> float:
        return _roofline_total(self.terms, self.roofline, removed)


def estimated_latency(model: nn.Module, input_shape: tuple[int, int, int], roofline: dict[str, float]) -> float:
    """The roofline's latency (seconds, batch 1) of `model`'s conv and linear layers."""
    return _roofline_total(_latency_terms(model, input_shape), roofline, {})


def _roofline_total(terms: dict[str, tuple], r: dict[str, float], removed: dict[tuple[str, int], int]) -> float:
    total = 0.0
    for name, (out, inp, k, pos_out, pos_in) in terms.items():
        out, inp = out - removed.get((name, 0), 0), inp - removed.get((name, 1), 0)
        ops = 2.0 * out * inp * k * pos_out
        nbytes = (inp * pos_in + out * pos_out + out * inp * k) * r["element_bytes"]
        total += max(ops / r["ops_per_s"], nbytes / r["bytes_per_s"]) + r["overhead_s"]
    return total


def _latency_terms(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """name -> (out, in, kernel taps per in channel, output positions, input positions) of conv and linear layers."""
    positions = _positions(model, input_shape)
    terms = {}
    for name, m in model.named_modules():
        if name not in positions:
            continue
        pos_out, pos_in = positions[name]
        if isinstance(m, nn.Conv2d):
            terms[name] = (m.out_channels, m.in_channels, m.kernel_size[0] * m.kernel_size[1] / m.groups,
                           pos_out, pos_in)
        else:
            terms[name] = (m.out_features, m.in_features, 1, pos_out, pos_in)
    return terms


def _positions(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
    """name -> (output, input) positions per channel of every conv and linear layer, from one forward pass:
    a conv's MACs are out * in * k * k * its output positions."""
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(
                 n, (o[0].numel() // o.shape[1], i[0][0].numel() // i[0].shape[1])))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _width_terms(model: nn.Module, input_shape: tuple[int, int, int], target: str) -> dict[str, tuple]:
    """name -> (out, in, cost per out-in channel pair, cost per out channel) of conv, linear and norm layers."""
    positions = {name: out for name, (out, _) in _positions(model, input_shape).items()}
    macs = target == "macs"
    terms = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] / m.groups
            terms[name] = (m.out_channels, m.in_channels, k * positions.get(name, 0) if macs else k,
                           0 if macs or m.bias is None else 1)
        elif isinstance(m, nn.Linear):
            terms[name] = (m.out_features, m.in_features, positions.get(name, 0) if macs else 1,
                           0 if macs or m.bias is None else 1)
        elif isinstance(m, nn.BatchNorm2d) and not macs and m.affine:
            terms[name] = (m.num_features, 0, 0, 2)
    return terms


def _couplings(model: nn.Module, graph, scores: list) -> dict[str, tuple[int, list]]:
    """root -> (width, [((layer, 0 out | 1 in), the root channel behind each coupled channel)])."""
    names, modules = {m: n for n, m in model.named_modules()}, dict(model.named_modules())
    out = {}
    for root_name, imp, _ in scores:
        root = modules[root_name]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                        list(range(len(imp))))
        seen: dict[tuple[str, int], dict[int, int]] = {}
        for item in group.items:
            layer = item.dep.target.module
            if isinstance(layer, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and layer in names:
                dim = 0 if graph.is_out_channel_pruning_fn(item.dep.handler) else 1
                seen.setdefault((names[layer], dim), {}).update(zip(item.idxs, item.root_idxs))
        out[root_name] = (len(imp), [(key, torch.tensor(list(m.values()), dtype=torch.long))
                                     for key, m in seen.items()])
    return out


def _graph(model: nn.Module, input_shape: tuple[int, int, int]):
    """torch-pruning's dependency graph of `model`, without couplings through channel broadcasts."""
    import torch_pruning as tp

    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the graph is traced through autograd: a frozen stage would be invisible to it
        p.requires_grad_(True)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)  # tracing leaves the model in eval mode
    _cut_channel_broadcasts(graph)
    return graph


def _cut_channel_broadcasts(graph) -> None:
    """Drop the edges torch-pruning draws from `x * w` to `w` when `w` has one channel broadcast over x's.

    torch-pruning treats every elementwise op as channel-aligned, so ASFF's `level * w[:, i:i+1]` ties the
    fused channels to the softmax weights and through them to the level-weight conv, whose channels are
    levels, not features: the whole fusion group then becomes unprunable (or, unignored, is pruned wrongly).
    """
    from torch_pruning.dependency import constants, index_mapping

    cut = False
    for node in list(graph.module2node.values()):
        fn = node.grad_fn
        if not hasattr(fn, "_saved_self") or not hasattr(fn, "_saved_other"):
            continue
        try:
            shapes = [fn._saved_self.shape, fn._saved_other.shape]
        except (AttributeError, RuntimeError):  # a python scalar operand, or saved tensors already freed
            continue
        if any(len(s) < 2 for s in shapes) or shapes[0][1] == shapes[1][1]:
            continue
        for (parent, _), shape in zip(fn.next_functions, shapes):
            if parent is None or shape[1] != 1:
                continue
            for source in [n for n in node.inputs if n.grad_fn is parent]:
                node.inputs.remove(source)
                source.outputs.remove(node)
                node.dependencies = [d for d in node.dependencies if d.target is not source]
                source.dependencies = [d for d in source.dependencies if d.target is not node]
                cut = True
    if cut:  # channel counts inferred through the cut edges (e.g. at the head's flatten) were wrong: redo them
        for node in graph.module2node.values():
            for dep in node.dependencies:
                dep.index_mapping = [constants.INDEX_MAPPING_PLACEHOLDER] * 2
        index_mapping.update_index_mapping(graph)


def _importance(kind: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "bn": tp.importance.BNScaleImportance, "taylor": tp.importance.TaylorImportance}[kind]()


def _scores(model: nn.Module, graph, config: PruneConfig,
            units: dict[str, int]) -> list[tuple[str, torch.Tensor, int]]:
    """(root layer name, per-channel importance, width unit) for every group pruning may shrink.

    A group's widths stay multiples of its unit, gcd(original width, round_to): aligned layers stay
    aligned, and a layer that never was (an SE bottleneck of 4 under round_to=8) keeps its own step.
    """
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    ignored = [m for layer in model.prune_ignored() for m in layer.modules()]
    rank, fallback = _importance(config.importance), tp.importance.MagnitudeImportance(p=2)
    out = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0][0].target.module
        imp = rank(group)
        if imp is None:  # BN importance on a group without BatchNorm, such as an SE bottleneck
            imp = fallback(group)
        if imp is None:
            continue
        unit = units.setdefault(names[root], math.gcd(len(imp), config.round_to))
        out.append((names[root], torch.nan_to_num(imp.float().cpu()), unit))
    return out


def _candidates(scores: list[tuple[str, torch.Tensor, int]], global_pruning: bool) -> list[float]:
    """Every channel ratio at which the plan changes, ascending: the search need try no other."""
    if global_pruning:
        total = sum(len(imp) for _, imp, _ in scores)
        return [k / total for k in range(total + 1)]
    return sorted({0.0} | {1 - k * unit / len(imp) for _, imp, unit in scores for k in range(1, len(imp) // unit)})


def _plan(scores: list[tuple[str, torch.Tensor, int]], ratio: float, global_pruning: bool) -> dict[str, list[int]]:
    """Channels to remove per group root at channel ratio `ratio`; widths stay multiples of their unit.

    Local pruning removes `ratio` of every group; global pruning removes the `ratio` least important
    channels of all groups pooled (scores are normalised per group), ties broken by position.
    """
    if global_pruning and scores:
        pooled = torch.cat([imp for _, imp, _ in scores])
        owner = torch.cat([torch.full((len(imp),), i) for i, (_, imp, _) in enumerate(scores)])
        removed = torch.argsort(pooled, stable=True)[: round(ratio * len(pooled))]
        counts = torch.bincount(owner[removed], minlength=len(scores)).tolist()
    plan = {}
    for i, (name, imp, unit) in enumerate(scores):
        width = len(imp)
        keep = width - counts[i] if global_pruning else math.floor(width * (1 - ratio) + 1e-9)
        keep = max(unit, keep // unit * unit)
        if keep < width:
            plan[name] = torch.argsort(imp, stable=True)[: width - keep].tolist()
    return plan


@torch.no_grad()
def _apply(model: nn.Module, graph, plan: dict[str, list[int]]) -> None:
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        layer = modules[name]
        group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, idxs)
        if graph.check_pruning_group(group):
            group.prune()


def _accumulate_grads(model: nn.Module, calib: Batches, loss: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
    """Sum `loss` gradients over `calib` in eval mode, so BatchNorm statistics stay as they are."""
    was_training = model.training
    model.eval()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # taylor scores every layer in a group, frozen ones included
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    seen = 0
    for images, labels in calib:
        loss(model(images), labels).backward()
        seen += 1
    for p in frozen:
        p.requires_grad_(False)
    model.train(was_training)
    if seen == 0:
        raise UserInputError("calib yielded no batches; taylor importance needs at least one")
