"""Which channels of a network can be removed without changing its output, found with Torch-Pruning's
DependencyGraph (coupled groups: residual additions, concatenations, BatchNorm, depthwise convs).

A group is one channel space shared by its members: producers (conv/linear output rows, BatchNorm),
consumers (conv/linear input columns) and the parameter-free ops in between. Channel ``c`` of a group
may go when every member agrees:
  * dead: every producer's row is exactly zero (weights and bias) and every BatchNorm maps 0 to exactly 0
    in eval (running mean 0 and, when affine, shift 0), so the channel carries exact zeros; or
  * unread: every consumer's input column is exactly zero, so nobody reads what the channel carries.
Groups that reach the network's output, or contain an op that does not map 0 to 0 channel by channel,
are never touched. A grouped convolution (not depthwise) in a group splits its channels into G equal blocks that
must stay equal: its channels go as whole "columns", the same position in every block (`ChannelGroup.tile`).

Torch-Pruning's analysis runs under a time and memory budget (`analysis_budget`): its shape inference can recurse
without end on some graphs (torchvision's Swin), and a model must be refused or left whole within seconds, never
hang. A channel shuffle (ShuffleNet's view-transpose-view) is a channel permutation Torch-Pruning cannot map: the
groups through it are left whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as _tp_index_mapping

from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.nm import satisfies_nm

ANALYSIS_SECONDS = 30.0  # CPU seconds; every torchvision model's analysis takes a few at 64x64 on 2 cores
ANALYSIS_WALL_FACTOR = 4  # wall-clock bound, as a multiple: a busy machine slows the analysis, it does not hang it
ANALYSIS_MEMORY_BYTES = 1 << 30  # resident memory the analysis may add (a few hundred MiB at most in the zoo)


class ChannelAnalysisError(GemdeployError):
    """Torch-Pruning could not analyze the model's channels (over budget, or a graph it cannot trace)."""


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB on Linux


_budget_active = False


@contextlib.contextmanager
def analysis_budget(seconds: float | None = None, memory_bytes: int | None = None):
    """Run Torch-Pruning work within ``seconds`` of CPU time (and ANALYSIS_WALL_FACTOR times that of wall time) and
    ``memory_bytes`` of added resident memory, else raise ChannelAnalysisError; its warnings are silenced (they are
    not the user's business). A timer signal checks the budget every 0.1 s, so the bound holds on the main thread
    only (elsewhere the work runs unbounded)."""
    global _budget_active
    seconds = ANALYSIS_SECONDS if seconds is None else seconds
    memory_bytes = ANALYSIS_MEMORY_BYTES if memory_bytes is None else memory_bytes
    if seconds <= 0:
        raise ChannelAnalysisError("has no time budget (0 s)")
    bounded = (not _budget_active and hasattr(signal, "setitimer")
               and threading.current_thread() is threading.main_thread())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not bounded:
            yield
            return
        start, cpu, base = time.monotonic(), time.process_time(), _resident_bytes()

        def check(signum, frame):
            if time.process_time() - cpu > seconds or time.monotonic() - start > ANALYSIS_WALL_FACTOR * seconds:
                raise ChannelAnalysisError(f"did not finish within {seconds:g} CPU seconds")
            if _resident_bytes() - base > memory_bytes:
                raise ChannelAnalysisError(f"needed more than {memory_bytes / 2 ** 30:g} GiB of memory")

        previous = signal.signal(signal.SIGALRM, check)
        _budget_active = True
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous)
            _budget_active = False


_tp_reshape_mapping = _tp_index_mapping.update_reshape_index_mapping


def _reshape_mapping_or_opaque(graph, node) -> None:
    """Torch-Pruning's index mapping of a reshape, for what it can map: a flatten of a 2-D or 4-D tensor. A view of
    any other tensor back into channels (a channel shuffle: view, transpose, view) is a permutation it cannot map
    (its shape inference divides by zero, or multiplies the indices without end); such a reshape is marked opaque,
    with no mapping, and `channel_groups` leaves every group through it whole."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if sizes is not None and len(sizes) not in (2, 4):
        node.gemdeploy_opaque = True
        return
    try:
        _tp_reshape_mapping(graph, node)
    except ZeroDivisionError:
        node.gemdeploy_opaque = True


_tp_index_mapping.update_reshape_index_mapping = _reshape_mapping_or_opaque

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


# Architectures whose analysis failed in this process, with the error: a run asks twice (the ticket's killed
# channels, then compaction), and an analysis that ran out of its budget once would spend it again for nothing.
_FAILED: dict[tuple, str] = {}


def _architecture(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    return (ANALYSIS_SECONDS, ANALYSIS_MEMORY_BYTES, type(model).__qualname__, tuple(input_shape),
            tuple((name, type(m).__name__) for name, m in model.named_modules()),
            tuple((name, tuple(p.shape)) for name, p in model.named_parameters()))


@contextlib.contextmanager
def _remembered_failure(model: nn.Module, input_shape: tuple[int, ...]):
    key = _architecture(model, input_shape)
    if key in _FAILED:
        raise ChannelAnalysisError(_FAILED[key])
    try:
        yield
    except ChannelAnalysisError as exc:
        _FAILED[key] = str(exc)
        raise


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # tracing must not touch BatchNorm statistics
    try:
        with _remembered_failure(model, input_shape), torch.enable_grad(), analysis_budget():
            try:  # Torch-Pruning traces through autograd
                return tp.DependencyGraph().build_dependency(model, torch.zeros(1, *input_shape, device=device),
                                                             verbose=False)
            except ChannelAnalysisError:
                raise
            except Exception as exc:  # noqa: BLE001 - Torch-Pruning fails in many ways on graphs it does not know
                text = str(exc).strip().splitlines()
                raise ChannelAnalysisError(f"cannot trace it: {type(exc).__name__}: {text[0] if text else ''}"
                                           ) from None
    finally:
        model.train(was_training)


@dataclass
class ChannelGroup:
    root: str  # name of the module whose output channels root the group (Torch-Pruning's root)
    size: int
    producers: list[tuple[str, torch.Tensor]]  # (prunable weight name, row index per root channel)
    group: object  # the Torch-Pruning group (full indices)
    tile: int = 1  # grouped convs split the channels into `tile` equal blocks: channel c goes with c mod units

    @property
    def units(self) -> int:
        """Channels that can go independently: whole columns across the `tile` blocks."""
        return self.size // self.tile


def _is_grouped(mod) -> bool:
    """A grouped convolution Torch-Pruning does not treat as depthwise (whose in and out channels are one)."""
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and not _is_depthwise(mod)


def _misread_by(graph: tp.DependencyGraph, mod) -> bool:
    """A conv Torch-Pruning's graph handles as depthwise (its in and out channels one) when it is not, or the other
    way round: one output per group that reads several inputs each, or a conv that became depthwise after the graph
    was built."""
    if not isinstance(mod, nn.Conv2d):
        return False
    node = graph.module2node.get(mod)
    taken = node is not None and node.type == tp.ops.OPTYPE.DEPTHWISE_CONV
    return taken != (_is_depthwise(mod) and mod.in_channels == mod.out_channels)


def _is_depthwise(mod) -> bool:
    """Torch-Pruning's definition: one filter per output channel (its in and out channels form one group)."""
    return isinstance(mod, nn.Conv2d) and mod.groups == mod.out_channels and mod.groups > 1


def _tile(group, size: int) -> int | None:
    """The number of equal blocks the grouped convs of ``group`` split its channels into (1: none), None when they
    cannot be honoured (a block size that does not divide, or a member whose channels are not the root's)."""
    tile = 1
    for it in group.items:
        mod = it.dep.target.module
        if not _is_grouped(mod):
            continue
        if [int(i) for i in it.idxs] != [int(i) for i in it.root_idxs] or len(it.idxs) != size:
            return None
        tile = math.lcm(tile, mod.groups)
    return tile if size % tile == 0 else None


def _is_out(group, item) -> bool:
    """Whether a group member's dependency prunes its target's output channels (Torch-Pruning's own predicate)."""
    return group._DG.is_out_channel_pruning_fn(item.dep.handler)


def _output_modules(graph: tp.DependencyGraph) -> set:
    return {m for m, node in graph.module2node.items() if len(node.outputs) == 0}


def _all_groups(graph: tp.DependencyGraph) -> list:
    """Torch-Pruning's `get_all_groups` (every conv/linear output space once), except that a root whose group
    Torch-Pruning cannot follow (an index mapping it got wrong, e.g. a split behind a channel shuffle) is skipped:
    that channel space is left whole instead of failing the whole analysis."""
    with _index_mapping_once(graph):
        return list(_groups_of_roots(graph, set()))


@contextlib.contextmanager
def _index_mapping_once(graph: tp.DependencyGraph):
    """Torch-Pruning recomputes every index mapping (recursive shape inference over the whole graph) for each group it
    builds; nothing changes between groups while none is pruned, so compute them once (ShuffleNet: minutes -> s)."""
    _tp_index_mapping.update_index_mapping(graph)
    original = _tp_index_mapping.update_index_mapping
    _tp_index_mapping.update_index_mapping = lambda g: None if g is graph else original(g)
    try:
        yield
    finally:
        _tp_index_mapping.update_index_mapping = original


def _groups_of_roots(graph: tp.DependencyGraph, visited: set):
    for module in list(graph.module2node):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except (IndexError, KeyError, ValueError, ZeroDivisionError, TypeError):
            continue
        for it in group.items:
            if graph.is_out_channel_pruning_fn(it.dep.handler):
                visited.add(it.dep.target.module)
        yield group


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[ChannelGroup]:
    """Every prunable channel group, except those that feed the network's output directly."""
    names = {m: n for n, m in model.named_modules()}
    outputs = _output_modules(graph)
    groups = []
    for group in _all_groups(graph):
        members = [it.dep.target.module for it in group.items]
        # The network's output channels stay (a final layer that only *reads* the group is fine).
        if any(it.dep.target.module in outputs and _is_out(group, it) for it in group.items):
            continue
        if any(m not in names and not _zero_preserving(m) for m in members):
            continue
        if any(_misread_by(graph, m) for m in members):
            continue  # Torch-Pruning's indices for it are wrong: left whole
        if any(getattr(graph.module2node.get(m), "gemdeploy_opaque", False) for m in members):
            continue
        size = len(group.items[0].idxs)
        tile = _tile(group, size)
        if tile is None:
            continue
        producers = []
        for it in group.items:
            mod = it.dep.target.module
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and _is_out(group, it):
                rows = torch.full((size,), -1, dtype=torch.long)
                rows[torch.as_tensor(it.root_idxs)] = torch.as_tensor(list(it.idxs))
                producers.append((f"{names[mod]}.weight", rows))
        groups.append(ChannelGroup(names[members[0]], size, producers, group, tile))
    return groups


def analyze(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tp.DependencyGraph, list[ChannelGroup]]:
    """The dependency graph and the channel groups of ``model``, within the analysis budget (ChannelAnalysisError
    otherwise)."""
    graph = build_graph(model, input_shape)
    with _remembered_failure(model, input_shape), analysis_budget():
        return graph, channel_groups(model, graph)


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
            depthwise = _is_depthwise(mod)
            if out or depthwise:  # a depthwise conv both reads and writes the channel
                rows = w.index_select(0, idxs.to(w.device)).flatten(1)
                zero = (rows == 0).all(1)
                if mod.bias is not None:
                    zero &= mod.bias.detach()[idxs.to(w.device)] == 0
                dead &= _per_root(zero, it.root_idxs, cg.size)
            if not out or depthwise:
                if depthwise:
                    zero = (w.index_select(0, idxs.to(w.device)).flatten(1) == 0).all(1)
                elif _is_grouped(mod):
                    # input channel c = block g, position j is read by block g's output rows only
                    g = mod.groups
                    blocks = w.reshape(g, w.shape[0] // g, w.shape[1], -1)
                    zero = (blocks == 0).all(3).all(1).flatten()[idxs.to(w.device)].cpu()
                elif mod.weight.dim() == 4 and mod.groups != 1:
                    zero = torch.zeros(len(idxs), dtype=torch.bool)  # other grouped layouts: never claim unread
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
    try:
        _, groups = analyze(model, input_shape)
    except ChannelAnalysisError:
        return {}  # no channel can be removed from this model, so none needs its extras held at zero
    for cg in groups:
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


def round_removal(removable: torch.Tensor, round_to: int, at_least: int = 1) -> list[int]:
    """The removable channels to actually remove so the kept count is a multiple of ``round_to`` (rounded up,
    keeping some dead channels) and never below ``round_to`` or ``at_least`` (or the original count, when smaller)."""
    size = removable.numel()
    kept = max(size - int(removable.sum()), at_least)
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


def _plan_tiled(cg: ChannelGroup, removable: torch.Tensor, round_to: int, nm: tuple[int, int] | None) -> list[int]:
    """`plan_removal` for a group split into equal blocks by grouped convs: a position goes from every block or
    from none, and the kept count (blocks x kept positions) stays a multiple of ``round_to``."""
    units = removable.view(cg.tile, cg.units).all(0)
    positions = round_removal(units, max(1, round_to) // math.gcd(max(1, round_to), cg.tile),
                              at_least=_min_outputs_per_block(cg))
    idxs = sorted(b * cg.units + j for b in range(cg.tile) for j in positions)
    return idxs if not idxs or nm is None or _keeps_nm(cg, idxs, nm) else []


def _min_outputs_per_block(cg: ChannelGroup) -> int:
    """2 when ``cg`` is a grouped conv's output: one output per group makes groups == out_channels, which
    Torch-Pruning takes for a depthwise conv (in and out channels one) whether or not each group reads one input,
    while the graph, built once, still prunes it as an ordinary conv (resnext101_32x8d's second pass indexed out of
    range)."""
    return 2 if any(_is_grouped(it.dep.target.module) and _is_out(cg.group, it) for it in cg.group.items) else 1


def plan_removal(cg: ChannelGroup, round_to: int, nm: tuple[int, int] | None = None) -> list[int]:
    """The channels of ``cg`` to remove. With ``nm``, consumers that hold the N:M pattern must keep it: when single
    removals would shift their groups of M, only whole aligned blocks of M removable channels go."""
    removable = removable_channels(cg)
    if cg.tile > 1:
        return _plan_tiled(cg, removable, round_to, nm)
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
    removing a channel can make another one dead or unread. ChannelAnalysisError (the model left as it was) when
    Torch-Pruning cannot analyze it within the budget."""
    graph = build_graph(model, input_shape)
    steps: list[dict] = []
    with analysis_budget():
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
    """Apply recorded removal steps to ``model`` (the original architecture), in place (no analysis without
    steps: a model left whole is loaded as it is)."""
    if not steps:
        return model
    graph = build_graph(model, input_shape)
    with analysis_budget():
        for step in steps:
            prune_step(graph, model, step["root"], [int(i) for i in step["channels"]])
    return model
