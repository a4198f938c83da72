"""Which channels of a network can be removed without changing its output, found with Torch-Pruning's
DependencyGraph (coupled groups: residual additions, concatenations, BatchNorm, depthwise convs).

A group is one channel space shared by its members: producers (conv/linear output rows, BatchNorm),
consumers (conv/linear input columns) and the parameter-free ops in between. Channel ``c`` of a group
may go when every member agrees:
  * dead: every producer's row is exactly zero (weights and bias) and every BatchNorm maps 0 to exactly 0
    in eval (running mean 0 and, when affine, shift 0), so the channel carries exact zeros; or
  * unread: every consumer's input column is exactly zero, so nobody reads what the channel carries.
Groups that reach the network's output, or contain an op that does not map 0 to 0 channel by channel,
are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from gemdeploy.sparsity.nm import satisfies_nm

# Torch-Pruning's structural ops only move channels around: an all-zero channel stays all zero.
STRUCTURAL = {tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.UNBIND,
              tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.EXPAND}
# Element-wise ops (by their autograd function) that map an all-zero channel to an all-zero channel and never mix
# channels; anything else (a sigmoid maps 0 to 0.5) keeps its group out of compaction.
ZERO_PRESERVING_GRAD_FNS = ("Relu", "Hardtanh", "Add", "Mean", "MaxPool", "AvgPool", "View", "Reshape", "Flatten",
                            "TBackward", "Squeeze", "Permute", "Clone", "Contiguous",
                            # activations of torchvision's and users' models with f(0) = 0
                            "Hardswish", "Silu", "Gelu", "LeakyRelu", "Elu", "Tanh", "Mish")


def _zero_preserving(op) -> bool:
    """Whether a parameter-free Torch-Pruning op node maps a zero channel to a zero channel."""
    kind = tp.ops.module2type(op)
    if kind in STRUCTURAL:
        return True
    if kind == tp.ops.OPTYPE.ELEMENTWISE:
        grad_fn = getattr(op, "_grad_fn", None)  # Torch-Pruning keeps the autograd function's name (a str)
        name = grad_fn if isinstance(grad_fn, str) else type(grad_fn).__name__
        return name.startswith(ZERO_PRESERVING_GRAD_FNS)
    return False


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # tracing must not touch BatchNorm statistics
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, *input_shape, device=device), verbose=False)
    model.train(was_training)
    return graph


@dataclass
class ChannelGroup:
    root: str  # name of the module whose output channels root the group (Torch-Pruning's root)
    size: int
    producers: list[tuple[str, torch.Tensor]]  # (prunable weight name, row index per root channel)
    group: object  # the Torch-Pruning group (full indices)


def _is_out(group, item) -> bool:
    """Whether a group member's dependency prunes its target's output channels (Torch-Pruning's own predicate)."""
    return group._DG.is_out_channel_pruning_fn(item.dep.handler)


def _output_modules(graph: tp.DependencyGraph) -> set:
    return {m for m, node in graph.module2node.items() if len(node.outputs) == 0}


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[ChannelGroup]:
    """Every prunable channel group, except those that feed the network's output directly."""
    names = {m: n for n, m in model.named_modules()}
    outputs = _output_modules(graph)
    groups = []
    for group in graph.get_all_groups():
        members = [it.dep.target.module for it in group.items]
        # The network's output channels stay (a final layer that only *reads* the group is fine).
        if any(it.dep.target.module in outputs and _is_out(group, it) for it in group.items):
            continue
        if any(m not in names and not _zero_preserving(m) for m in members):
            continue
        size = len(group.items[0].idxs)
        producers = []
        for it in group.items:
            mod = it.dep.target.module
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and _is_out(group, it):
                rows = torch.full((size,), -1, dtype=torch.long)
                rows[torch.as_tensor(it.root_idxs)] = torch.as_tensor(list(it.idxs))
                producers.append((f"{names[mod]}.weight", rows))
        groups.append(ChannelGroup(names[members[0]], size, producers, group))
    return groups


def _per_root(values: torch.Tensor, root_idxs, size: int) -> torch.Tensor:
    """AND of ``values`` (one bool per member index) over the member indices that map to each root channel."""
    out = torch.ones(size, dtype=torch.bool)
    roots = torch.as_tensor(root_idxs, dtype=torch.long)
    return out.scatter_reduce(0, roots, values.cpu(), reduce="amin")


@torch.no_grad()
def removable_channels(cg: ChannelGroup) -> torch.Tensor:
    """Bool per root channel: True where removing it cannot change the network's output."""
    dead = torch.ones(cg.size, dtype=torch.bool)
    unread = torch.ones(cg.size, dtype=torch.bool)
    for it in cg.group.items:
        mod, idxs = it.dep.target.module, torch.as_tensor(list(it.idxs), dtype=torch.long)
        out = _is_out(cg.group, it)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight.detach()
            depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1
            if out or depthwise:  # a depthwise conv both reads and writes the channel
                rows = w.index_select(0, idxs.to(w.device)).flatten(1)
                zero = (rows == 0).all(1)
                if mod.bias is not None:
                    zero &= mod.bias.detach()[idxs.to(w.device)] == 0
                dead &= _per_root(zero, it.root_idxs, cg.size)
            if not out or depthwise:
                if depthwise:
                    zero = (w.index_select(0, idxs.to(w.device)).flatten(1) == 0).all(1)
                elif mod.weight.dim() == 4 and mod.groups != 1:
                    zero = torch.zeros(len(idxs), dtype=torch.bool)  # grouped convs: never claim unread
                else:
                    zero = (w.index_select(1, idxs.to(w.device)).transpose(0, 1).flatten(1) == 0).all(1)
                unread &= _per_root(zero, it.root_idxs, cg.size)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.running_mean is None:
                leak = torch.ones(len(idxs), dtype=torch.bool)  # batch statistics in eval: cannot prove 0 -> 0
            else:
                # eval maps 0 to weight * (0 - mean) / sqrt(var + eps) + bias: zero when bias is 0 and mean or weight is
                leak = mod.running_mean.detach()[idxs.to(mod.running_mean.device)] != 0
                if mod.affine:
                    leak &= mod.weight.detach()[idxs.to(mod.weight.device)] != 0
                    leak |= mod.bias.detach()[idxs.to(mod.bias.device)] != 0
            dead &= _per_root(~leak.cpu(), it.root_idxs, cg.size)
        elif isinstance(mod, nn.Module) and any(True for _ in mod.parameters(recurse=False)):
            dead[:] = False  # an unknown layer with parameters: claim nothing
            unread[:] = False
    return dead | unread


@torch.no_grad()
def killed_channel_params(model: nn.Module, input_shape: tuple[int, ...], mask: dict[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
    """0/1 masks for the parameters that outlive a channel the ticket kills (every producer row of the channel
    removed): the producers' biases and the affine BatchNorm scale and shift of that channel. Held at zero while
    the ticket trains, the channel carries exact zeros and compaction removes it (a trained shift would turn it
    into a constant it must keep). Keyed by parameter name; empty when nothing outlives a killed channel."""
    has_extra = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()) or \
        any(isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None for m in model.modules())
    if not has_extra:
        return {}
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    for cg in channel_groups(model, build_graph(model, input_shape)):
        if not cg.producers:
            continue
        killed = torch.ones(cg.size, dtype=torch.bool)
        for weight, rows in cg.producers:
            gone = (mask[weight].detach().cpu().flatten(1) == 0).all(1)
            produced = rows >= 0
            killed[produced] &= gone[rows[produced]]
        if not killed.any():
            continue
        for it in cg.group.items:
            mod = it.dep.target.module
            params = []
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and _is_out(cg.group, it) and mod.bias is not None:
                params = ["bias"]
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
                params = ["weight", "bias"]
            if not params or mod not in names:
                continue
            idxs = torch.as_tensor(list(it.idxs), dtype=torch.long)
            drop = idxs[killed[torch.as_tensor(it.root_idxs, dtype=torch.long)]]
            for p in params:
                key = f"{names[mod]}.{p}" if names[mod] else p
                keep = out.setdefault(key, torch.ones(getattr(mod, p).shape[0]))
                keep[drop] = 0.0
    return out


def round_removal(removable: torch.Tensor, round_to: int) -> list[int]:
    """The removable channels to actually remove so the kept count is a multiple of ``round_to`` (rounded up,
    keeping some dead channels) and never below ``round_to`` (or the original count, when smaller)."""
    size = removable.numel()
    kept = size - int(removable.sum())
    step = max(1, round_to)
    target = min(size, max(step, math.ceil(kept / step) * step))
    candidates = torch.nonzero(removable).flatten().tolist()
    return sorted(candidates[: size - target])


def _keeps_nm(cg: ChannelGroup, remove: list[int], nm: tuple[int, int]) -> bool:
    """Whether every consumer that holds the N:M pattern still holds it once the ``remove`` channels are gone
    (removing input channels shifts the groups of M that follow)."""
    n, m = nm
    gone = torch.as_tensor(remove, dtype=torch.long)
    for it in cg.group.items:
        mod = it.dep.target.module
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or _is_out(cg.group, it) or getattr(mod, "groups", 1) != 1:
            continue
        w = mod.weight.detach().cpu()
        if not satisfies_nm(w, n, m):
            continue
        drop = torch.as_tensor(list(it.idxs), dtype=torch.long)[torch.isin(torch.as_tensor(it.root_idxs), gone)]
        keep = torch.ones(w.shape[1], dtype=torch.bool)
        keep[drop] = False
        if not satisfies_nm(w[:, keep], n, m):
            return False
    return True


def plan_removal(cg: ChannelGroup, round_to: int, nm: tuple[int, int] | None = None) -> list[int]:
    """The channels of ``cg`` to remove. With ``nm``, consumers that hold the N:M pattern must keep it: when single
    removals would shift their groups of M, only whole aligned blocks of M removable channels go."""
    removable = removable_channels(cg)
    idxs = round_removal(removable, round_to)
    if not idxs or nm is None or _keeps_nm(cg, idxs, nm):
        return idxs
    m = nm[1]
    blocks = removable[: cg.size // m * m].view(-1, m).all(1)
    step = math.lcm(max(1, round_to), m)
    kept = cg.size - m * int(blocks.sum())
    target = min(cg.size, max(step, math.ceil(kept / step) * step))
    chosen = torch.nonzero(blocks).flatten().tolist()[: (cg.size - target) // m]
    idxs = sorted(b * m + j for b in chosen for j in range(m))
    return idxs if idxs and _keeps_nm(cg, idxs, nm) else []


def prune_step(graph: tp.DependencyGraph, model: nn.Module, root: str, idxs: list[int]) -> None:
    module = dict(model.named_modules())[root]
    pruner = graph.get_pruner_of_module(module)
    graph.get_pruning_group(module, pruner.prune_out_channels, idxs).prune()


def compact_channels(model: nn.Module, input_shape: tuple[int, ...], round_to: int, nm: tuple[int, int] | None = None,
                     max_passes: int = 10) -> list[dict]:
    """Remove every removable channel of ``model`` in place; returns the steps (root module, channel indices at
    that point) that `replay_steps` applies to a fresh copy of the architecture. Passes repeat because
    removing a channel can make another one dead or unread."""
    graph = build_graph(model, input_shape)
    steps: list[dict] = []
    for _ in range(max_passes):
        planned = [(cg.root, plan_removal(cg, round_to, nm)) for cg in channel_groups(model, graph)]
        planned = [(root, idxs) for root, idxs in planned if idxs]
        if not planned:
            break
        for root, idxs in planned:  # groups are disjoint channel spaces: indices stay valid across them
            prune_step(graph, model, root, idxs)
            steps.append({"root": root, "channels": idxs})
    return steps


def replay_steps(model: nn.Module, input_shape: tuple[int, ...], steps: list[dict]) -> nn.Module:
    """Apply recorded removal steps to ``model`` (the original architecture), in place."""
    graph = build_graph(model, input_shape)
    for step in steps:
        prune_step(graph, model, step["root"], [int(i) for i in step["channels"]])
    return model
