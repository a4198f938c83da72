"""Gem-Miner (Sreenivasan et al., NeurIPS 2022), as the authors' `hc_iter` algorithm implements it.

One score p in [0, 1] per prunable weight, initialized U[0, 1]; the weights stay frozen at their
(signed-constant) initialization. The forward pass uses ``w * 1[p > 0.5] * flag`` with a
straight-through gradient to p, the loss adds ``lambda * sum(p^2)``, and p is projected back to
[0, 1] after every SGD step. Every ``freeze_period`` epochs the lowest-|p| fraction of the still
active weights (pooled over all layers) is frozen out for good (flag = 0), on a geometric schedule
that ends exactly at the target density. The ticket is ``flag``.

Patterns (``--pattern``):
  * ``2:4`` (N:M from ``--nm``): in eligible layers (gemdeploy.sparsity.nm.nm_eligible_layers) the forward mask also keeps
    only the top-N scores of each group of M input channels among the active weights, and every freezing round
    keeps weights only from that projection, so the ticket holds exactly N:M there; ``--sparsity`` then removes
    more, unstructured, on top (a density above N/M in those layers is capped at N/M).
  * ``channel``: one score per output channel of each coupled channel group (Torch-Pruning groups: a residual
    stage shares one score per channel), so a frozen-out channel zeroes every producer row of the group and
    compaction removes it; ``--sparsity`` is the fraction of those channels removed.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.func import functional_call

from gemdeploy.errors import GemdeployError
from gemdeploy.train import distributed as dist
from gemdeploy.train.flat import FlatLayout
from gemdeploy.mine.context import RunContext
from gemdeploy.run import layout
from gemdeploy.train.masked import wrap_ddp
from gemdeploy.train.masked import train_masked
from gemdeploy.train.phase import Phase, clear_checkpoint, run_phase
from gemdeploy.train.seeds import generator, seed_for
from gemdeploy.sparsity.masks import Mask, keep_count, prunable_weights
from gemdeploy.sparsity.topk import global_topk
from gemdeploy.mine.methods.base import Method, Ticket
from gemdeploy.mine.recipes import finetune_recipe, paper_lambda
from gemdeploy.sparsity import PATTERNS
from gemdeploy.sparsity.nm import nm_eligible_layers, nm_mask_from_scores
from gemdeploy.train.loop import cosine_lr, maybe_compile, sgd

THRESHOLD = 0.5
LAM_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # `--lam auto`: a decade grid around the paper's values (1e-5 .. 1e-4) and above


def straight_through_mask(scores: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """``1[p > 0.5]`` (times ``allowed``) in the forward pass, identity gradient in the backward pass."""
    hard = (scores > THRESHOLD).to(scores.dtype)
    if allowed is not None:
        hard = hard * allowed
    return hard + scores - scores.detach()


class PerLayerScores(nn.Module):
    """Scores held as one tensor per layer (or channel group): the L2 penalty on ``self.scores`` and the projection
    onto [0, 1], a few operations per layer. ChannelScoredNetwork (few groups) keeps it; ScoredNetwork is flat."""

    scores: nn.ParameterList

    def score_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains."""
        return list(self.scores)

    def l2_penalty(self) -> torch.Tensor:
        return sum((s * s).sum() for s in self.scores)

    @torch.no_grad()
    def project_(self) -> None:
        for s in self.scores:
            s.clamp_(0.0, 1.0)


class ScoredNetwork(nn.Module):
    """Wraps a network whose weights are frozen; the trainable parameters are the scores.

    Scores, flags and the frozen weights each live in one flat buffer (gemdeploy.train.flat), each layer's a view in
    its weight's memory layout: the forward mask, the L2 penalty and the projection are a few operations on the
    buffers, not a few per layer (on a GPU, launches bound the step). The network's own weight parameters become
    views of the weight buffer, so its state dict still loads into what the forward pass reads.
    """

    def __init__(self, net: nn.Module, generator: torch.Generator, nm: tuple[int, int] | None = None):
        super().__init__()
        self.net = net
        self.nm = nm
        self.nm_layers = nm_eligible_layers(net, nm[1]) if nm else set()
        for p in net.parameters():
            p.requires_grad_(False)
        weights = prunable_weights(net)
        self.names = list(weights)
        frozen = [weights[k] for k in self.names]
        if len({(w.device, w.dtype) for w in frozen}) != 1:
            raise GemdeployError("Gem-Miner needs every prunable weight on one device and in one dtype")
        self.layout = FlatLayout(frozen)
        device = frozen[0].device
        self._weights = self.layout.empty(device, frozen[0].dtype)
        self.layout.fill(self._weights, frozen)
        for w, view in zip(frozen, self.layout.views(self._weights)):
            w.data = view
        # U[0, 1] per layer, in layer order, from ``generator``: the same draws as one tensor per layer
        scores = self.layout.empty(device)
        self.layout.fill(scores, [torch.rand(w.shape, generator=generator) for w in frozen])
        self.flat_scores = nn.Parameter(scores)
        self.register_buffer("flat_flags", torch.ones(self.layout.numel, device=device))

    @property
    def scores(self) -> list[torch.Tensor]:
        """Each layer's scores (views of the flat buffer, for reading)."""
        return self.layout.views(self.flat_scores.detach())

    def flags(self) -> list[torch.Tensor]:
        """Each layer's flags (views of the flat buffer: writing one writes the buffer)."""
        return self.layout.views(self.flat_flags)

    def score_parameters(self) -> list[nn.Parameter]:
        return [self.flat_scores]

    def l2_penalty(self) -> torch.Tensor:
        s = self.flat_scores
        return (s * s).sum()

    @torch.no_grad()
    def project_(self) -> None:
        self.flat_scores.clamp_(0.0, 1.0)

    def _nm_allowed(self, name: str, scores: torch.Tensor, flag: torch.Tensor) -> torch.Tensor | None:
        """The N:M projection of the active weights' |p| in an eligible layer (None elsewhere)."""
        if name not in self.nm_layers:
            return None
        return nm_mask_from_scores(scores.abs(), *self.nm, active=flag)

    def _flat_allowed(self) -> torch.Tensor | None:
        """The N:M projections of every eligible layer in one flat 0/1 tensor (None without N:M)."""
        if not self.nm_layers:
            return None
        allowed = torch.ones_like(self.flat_flags)
        for k, a, s, f in zip(self.names, self.layout.views(allowed), self.scores, self.flags()):
            nm = self._nm_allowed(k, s, f)
            if nm is not None:
                a.copy_(nm)
        return allowed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ste = straight_through_mask(self.flat_scores, self._flat_allowed())
        effective = self._weights * ste * self.flat_flags
        return functional_call(self.net, dict(zip(self.names, self.layout.views(effective))), (x,))

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() give the network new weight tensors: move the flat buffer the same way and make them its
        # views again, so the forward pass never reads stale weights.
        super()._apply(fn, recurse)
        self._weights = fn(self._weights)
        weights = prunable_weights(self.net)
        for k, view in zip(self.names, self.layout.views(self._weights)):
            weights[k].data = view
        return self

    def flag_mask(self) -> Mask:
        return Mask({k: f.detach().clone() for k, f in zip(self.names, self.flags())})

    def active_density(self) -> float:
        """Density of what the forward pass uses right now: 1[p > 0.5] * flag."""
        kept = int(((self.flat_scores > THRESHOLD) & (self.flat_flags > 0)).sum())
        return kept / self.layout.numel

    @torch.no_grad()
    def freeze_to(self, keep: int, reverse: bool = False) -> None:
        """Freeze out the lowest-|p| active weights so that exactly ``keep`` stay active (globally pooled); with
        ``reverse``, the highest-|p| ones (the authors' score-inversion sanity check)."""
        scores = {k: (-s.abs() if reverse else s.abs()) for k, s in zip(self.names, self.scores)}
        eligible = {}
        for k, s, f in zip(self.names, self.scores, self.flags()):
            allowed = self._nm_allowed(k, s, f)  # N:M layers keep weights only from their projection
            eligible[k] = f if allowed is None else f * allowed
        new = global_topk(scores, keep, eligible=eligible)
        for k, f in zip(self.names, self.flags()):
            f.copy_(new[k])

    @torch.no_grad()
    def freeze_layers(self, counts: dict[str, int], reverse: bool = False) -> None:
        """Like `freeze_to`, with a count per layer instead of one pooled count (sanity's invert keeps every layer's
        density of the original ticket)."""
        for k, s, f in zip(self.names, self.scores, self.flags()):
            allowed = self._nm_allowed(k, s, f)
            eligible = f if allowed is None else f * allowed
            score = (-s.abs() if reverse else s.abs())
            new = global_topk({k: score}, counts[k], eligible={k: eligible}, min_per_layer=min(1, counts[k]))
            f.copy_(new[k])


class ChannelScoredNetwork(PerLayerScores):
    """Gem-Miner over channels: one score per channel of each coupled channel group; a channel's score masks
    the matching output row of every producer (conv/linear) in its group. Same interface as ScoredNetwork."""

    def __init__(self, net: nn.Module, generator: torch.Generator, input_shape: tuple[int, ...]):
        super().__init__()
        from gemdeploy.sparsity.channels import ChannelAnalysisError, analyze  # torch_pruning: --pattern channel only

        self.net = net
        try:
            _, groups = analyze(net, input_shape)  # traced through autograd: before freezing
        except ChannelAnalysisError as exc:
            raise GemdeployError(f"the channel pattern cannot handle this model: Torch-Pruning's channel analysis "
                                 f"{exc}; --pattern unstructured or 2:4 work without it") from None
        if not groups:
            raise GemdeployError("the channel pattern found no channel group it can remove in this model (every "
                                 "one feeds the output or passes through an op that mixes channels); --pattern "
                                 "unstructured or 2:4 work on it")
        for p in net.parameters():
            p.requires_grad_(False)
        weights = prunable_weights(net)
        self.names = list(weights)
        device = next(net.parameters()).device
        # One score per unit: a channel, or a column of channels across the equal blocks of a grouped conv.
        self.scores = nn.ParameterList([nn.Parameter(torch.rand(g.units, generator=generator).to(device)) for g in groups])
        for i, g in enumerate(groups):
            self.register_buffer(f"flag{i}", torch.ones(g.units, device=device))
        self.tiles = [g.tile for g in groups]
        # weight name -> (group index, member row of each root channel); a layer produces for one group at most
        self.rows = {k: (i, rows.to(device)) for i, g in enumerate(groups) for k, rows in g.producers}

    def flags(self) -> list[torch.Tensor]:
        return [getattr(self, f"flag{i}") for i in range(len(self.scores))]

    def _row_masks(self, unit_masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = prunable_weights(self.net)
        channel_masks = [m.repeat(t) for m, t in zip(unit_masks, self.tiles)]  # root channel c -> unit c mod units
        out = {}
        for k, (i, rows) in self.rows.items():
            w = weights[k]
            per_row = torch.zeros(w.shape[0], device=w.device, dtype=channel_masks[i].dtype)
            per_row = per_row.scatter(0, rows, channel_masks[i])
            out[k] = per_row.view(-1, *([1] * (w.dim() - 1)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = prunable_weights(self.net)
        masks = self._row_masks([straight_through_mask(s) * f for s, f in zip(self.scores, self.flags())])
        effective = {k: weights[k] * m for k, m in masks.items()}
        return functional_call(self.net, effective, (x,))

    def flag_mask(self) -> Mask:
        weights = prunable_weights(self.net)
        rows = self._row_masks([f.detach() for f in self.flags()])
        return Mask({k: (rows[k].expand_as(w).clone() if k in rows else torch.ones_like(w)).float()
                     for k, w in weights.items()})

    def active_density(self) -> float:
        """Fraction of channels the forward pass uses right now."""
        kept = sum(int(((s > THRESHOLD) & (f > 0)).sum()) for s, f in zip(self.scores, self.flags()))
        return kept / max(1, sum(s.numel() for s in self.scores))

    def channel_density(self) -> float:
        return sum(float(f.sum()) for f in self.flags()) / max(1, sum(f.numel() for f in self.flags()))

    @torch.no_grad()
    def freeze_to(self, keep: int, reverse: bool = False) -> None:
        """Freeze out the lowest-|p| active channels (the highest with ``reverse``), pooled over all groups, so
        that ``keep`` stay."""
        keys = [str(i) for i in range(len(self.scores))]
        scores = {k: (-s.abs() if reverse else s.abs()) for k, s in zip(keys, self.scores)}
        new = global_topk(scores, keep, eligible=dict(zip(keys, self.flags())))
        for k, f in zip(keys, self.flags()):
            f.copy_(new[k])


def layer_freeze_schedule(epochs: int, period: int, sizes: dict[str, int], targets: dict[str, int]) -> dict[int, dict]:
    """`freeze_schedule` per layer: each layer goes geometrically from its size to its own target count."""
    rounds = max(1, (epochs - 1) // period if period > 0 else 0)
    at = [period * (j + 1) for j in range(rounds)] if (epochs - 1) // max(1, period) >= 1 else [epochs]
    return {e: {k: max(targets[k], round(sizes[k] * (targets[k] / sizes[k]) ** ((j + 1) / len(at))))
                for k in sizes} for j, e in enumerate(at)}


def freeze_schedule(epochs: int, period: int, total: int, density: float) -> dict[int, int]:
    """Completed-epoch -> number of weights left active after freezing at that epoch.

    ``floor((E - 1) / T)`` freezing rounds at epochs T, 2T, ... remove the same fraction
    ``q = 1 - density^(1 / rounds)`` of the active weights each time; the last round lands exactly on the
    target count. Runs shorter than one period freeze once, at the end.
    """
    rounds = (epochs - 1) // period if period > 0 else 0
    if rounds < 1:
        return {epochs: keep_count(total, density)}
    return {period * (j + 1): keep_count(total, density ** ((j + 1) / rounds)) for j in range(rounds)}


class GemMiner(Method):
    name = "gem-miner"
    has_scores = True
    mines = True  # sanity's invert check re-mines with the freezing order reversed
    default_init = "signed-constant"
    patterns = tuple(PATTERNS.names())

    def weight_copies(self, config) -> float | None:
        # Per weight: the weight, its score, the score's gradient and momentum, its flag, and the forward pass's
        # masked weight, plus the freezing round's selection. Measured on the CPU: vgg11 (0.53 GB of weights) peaks at
        # 6.45 GB, regnet_y_128gf (2.58 GB) was killed above 23.8 GB, so 9 copies is below both. Channel scores
        # are one per channel: no per-weight copies to count.
        return None if PATTERNS.get(config.pattern).per_channel else 9.0

    def find_ticket(self, ctx: RunContext) -> Ticket:
        if ctx.config.lam == "auto":
            return self._with_searched_lambda(ctx)
        cfg = ctx.config
        gen = generator(cfg.seed, "scores")
        shape = tuple(ctx.data.input_shape)
        pattern = PATTERNS.get(cfg.pattern)
        if pattern.per_channel:
            scored = ChannelScoredNetwork(ctx.fresh_model(), gen, shape)
            mask, info = self._mine(ctx, scored, "mine", cfg.density)
            # Scores are per channel; what sanity checks need per weight is the mask itself.
            info["channel_sparsity"] = 1.0 - scored.channel_density()
            return Ticket(mask.cpu(), None, info)

        channel_info = None
        scored = ScoredNetwork(ctx.fresh_model(), gen, pattern.groups(cfg.nm))
        if cfg.channel_sparsity is not None:
            # Stage 1: a channel ticket; stage 2 mines the weight pattern inside the kept channels.
            channels = self._channel_stage(ctx, shape)
            with torch.no_grad():
                for f, k in zip(scored.flags(), scored.names):
                    f.copy_(channels[k].to(f.device))
            channel_info = ctx.run.read_json(layout.CHANNEL_TICKET)
        mask, info = self._mine(ctx, scored, "mine", cfg.density)
        if scored.nm:
            info["nm"], info["nm_layers"] = cfg.nm, sorted(scored.nm_layers)
        if channel_info is not None:
            info["channel_sparsity"] = channel_info["channel_sparsity"]
            info["mining_seconds"] += channel_info["mining_seconds"]
            info["training_epochs"] += cfg.epochs
        scores = {k: s.detach().clone() for k, s in zip(scored.names, scored.scores)}
        return Ticket(mask.cpu(), {k: v.cpu() for k, v in scores.items()}, info)

    def _with_searched_lambda(self, ctx: RunContext) -> Ticket:
        """`--lam auto`: short runs on the validation split (a quarter of the mining and of the ticket training, each
        freezing down to the target) for every lambda of LAM_GRID, as the authors picked lambda by hand with a grid;
        the best validation accuracy wins (ties: the paper's value). The search counts towards time to ticket."""
        cfg = ctx.config
        e_mine, e_train = max(2, cfg.epochs // 4), max(1, cfg.finetune_epochs // 4)
        paper = paper_lambda(cfg.density)
        results = []
        for lam in LAM_GRID:
            sub = ctx.run.sub(f"{layout.LAM_SEARCH}/{lam:g}")
            if sub.has(layout.SANITY_RESULT):
                results.append(sub.read_object(layout.SANITY_RESULT, {"lam": float, "val_acc": float,
                                                                       "seconds": float, "epochs": int}))
                continue
            short = dataclasses.replace(cfg, lam=lam, epochs=e_mine, finetune_epochs=e_train,
                                        freeze_period=max(1, round(5 * e_mine / 150)))
            sctx = dataclasses.replace(ctx, config=short, run=sub, resume=True)
            ticket = self.find_ticket(sctx)
            clear_checkpoint(sub, "mine")
            _, trained = train_masked(sctx, ticket.mask, sctx.fresh_model(), phase="finetune", epochs=e_train,
                                      recipe=finetune_recipe(short), seed=seed_for(cfg.seed, "training-data"),
                                      batch_size=cfg.batch_size)
            clear_checkpoint(sub, "finetune")
            record = {"lam": lam, "val_acc": trained.val.acc, "mined_val_acc": ticket.info["mined_val_acc"],
                      "seconds": ticket.info["mining_seconds"] + trained.seconds, "epochs": e_mine + e_train}
            sub.write_json(layout.SANITY_RESULT, record)
            results.append(record)
        best = max(results, key=lambda r: (round(r["val_acc"], 4), -abs(math.log10(r["lam"] / paper))))
        ticket = self.find_ticket(dataclasses.replace(ctx, config=dataclasses.replace(cfg, lam=best["lam"])))
        ticket.info["lam_search"] = {"grid": list(LAM_GRID), "mining_epochs": e_mine, "training_epochs": e_train,
                                     "results": results, "chosen": best["lam"]}
        ticket.info["mining_seconds"] += sum(r["seconds"] for r in results)
        ticket.info["training_epochs"] += sum(r["epochs"] for r in results)
        return ticket

    def _channel_stage(self, ctx: RunContext, shape: tuple[int, ...]) -> Mask:
        """The channel ticket of ``--channel-sparsity``, kept in the run directory so a resume skips it."""
        cfg = ctx.config
        if ctx.run.has(layout.CHANNEL_MASK) and ctx.run.has(layout.CHANNEL_TICKET):
            return Mask.load(ctx.run / layout.CHANNEL_MASK)
        scored = ChannelScoredNetwork(ctx.fresh_model(), generator(cfg.seed, "channel-scores"), shape)
        mask, info = self._mine(ctx, scored, "mine-channels", 1.0 - cfg.channel_sparsity)
        ctx.run.save_mask(layout.CHANNEL_MASK, mask)
        ctx.run.write_json(layout.CHANNEL_TICKET, {"channel_sparsity": 1.0 - scored.channel_density(),
                                                   "mining_seconds": info["mining_seconds"]})
        dist.barrier()
        clear_checkpoint(ctx.run, "mine-channels")
        return mask

    def _mine(self, ctx: RunContext, scored: nn.Module, phase: str, density: float) -> tuple[Mask, dict]:
        """The Gem-Miner phase over ``scored``'s scores: cosine SGD, L2 penalty, projection, freezing rounds."""
        cfg = ctx.config
        total = sum(s.numel() for s in scored.scores)
        schedule = freeze_schedule(cfg.epochs, cfg.freeze_period, total, density)
        lam = cfg.lam
        reverse = cfg.invert_freezing
        per_layer = None
        if ctx.layer_targets is not None and isinstance(scored, ScoredNetwork):
            sizes = {k: s.numel() for k, s in zip(scored.names, scored.scores)}
            per_layer = layer_freeze_schedule(cfg.epochs, cfg.freeze_period, sizes, ctx.layer_targets)
            schedule = {e: sum(c.values()) for e, c in per_layer.items()}

        def end_of_epoch(done: int) -> None:
            if per_layer is not None and done in per_layer:
                scored.freeze_layers(per_layer[done], reverse=reverse)
            elif done in schedule:
                scored.freeze_to(schedule[done], reverse=reverse)

        result = run_phase(ctx, Phase(
            name=phase, epochs=cfg.epochs, module=scored, optimizer=sgd(scored.score_parameters(), cfg.lr, cfg.momentum, 0.0),
            lr=lambda e: cosine_lr(cfg.lr, e, cfg.epochs), batch_size=cfg.batch_size,
            seed=seed_for(cfg.seed, "mining-data"), forward=maybe_compile(wrap_ddp(scored, ctx.hw), ctx.hw),
            penalty=lambda: lam * scored.l2_penalty(), after_step=scored.project_, end_of_epoch=end_of_epoch,
            density=lambda: scored.flag_mask().density(),
            record=lambda: {"active_density": scored.active_density()}))
        info = {"lam": lam, "freeze_schedule": {str(k): v for k, v in schedule.items()},
                "freezing": "highest |p| first (inverted)" if reverse else "lowest |p| first",
                "mining_seconds": result.seconds, "mined_val_acc": result.val.acc, "pattern": cfg.pattern,
                "training_epochs": cfg.epochs}
        return scored.flag_mask(), info
