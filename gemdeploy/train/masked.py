"""Training with a fixed mask: fine-tuning a ticket, training the dense model, IMP's rounds, sanity checks.

A pruned weight stays exactly zero throughout: its gradient is masked before the optimizer sees it, so
its momentum buffer stays zero and weight decay (proportional to the weight) has nothing to act on, and
the mask is re-applied after every step as a guard against any other update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.train import distributed as dist
from gemdeploy.train.loop import Recipe, maybe_compile
from gemdeploy.train.phase import Phase, PhaseResult, run_phase
from gemdeploy.user_code import is_spec


class MaskedModel:
    """Keeps ``mask`` applied to ``model``'s prunable weights through training (and, with ``extra``, to other
    parameters: the biases and BatchNorm affine parameters of channels the ticket kills, see
    gemdeploy.sparsity.channels.killed_channel_params)."""

    def __init__(self, model: nn.Module, mask: Mask, extra: dict[str, torch.Tensor] | None = None):
        try:
            mask.check_matches(model)
        except ValueError as exc:
            raise GemdeployError(f"the ticket does not fit the model: {exc}") from None
        self.model = model
        device = next(model.parameters()).device
        params = dict(model.named_parameters())
        self.weights = {**prunable_weights(model), **{k: params[k] for k in (extra or {})}}
        self.mask = Mask({**mask, **(extra or {})}).to(device)
        self.enforce()
        self._hooks = [w.register_hook(lambda g, m=self.mask[k]: g * m.to(g.dtype)) for k, w in self.weights.items()
                       if w.requires_grad]

    @torch.no_grad()
    def enforce(self) -> None:
        for k, w in self.weights.items():
            w.mul_(self.mask[k].to(w.dtype))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def wrap_ddp(module: nn.Module, hw) -> nn.Module:
    if not dist.is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [hw.device.index] if hw.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def train_masked(ctx: Any, mask: Mask, model: nn.Module, *, phase: str, epochs: int, recipe: Recipe, seed: int,
                 batch_size: int, fixed: dict | None = None) -> tuple[nn.Module, PhaseResult]:
    """Train ``model`` (on the device, at its starting weights) with ``mask`` fixed, checkpointed every epoch
    under ``phase``. Returns the model in eval mode and the phase's result (validation, seconds)."""
    extra = None
    if is_spec(ctx.config.model):
        # A user's model may carry biases and affine BatchNorm (the built-in models have neither where a channel
        # can die): a channel the ticket kills loses them too, so compaction can remove it.
        from gemdeploy.sparsity.channels import killed_channel_params  # torch_pruning loads only when needed

        extra = killed_channel_params(model, tuple(ctx.data.input_shape), mask)
    masked = MaskedModel(model, mask, extra)
    density = mask.density()
    result = run_phase(ctx, Phase(
        name=phase, epochs=epochs, module=model, optimizer=recipe.optimizer(model.parameters()),
        lr=lambda e: recipe.lr_at(e, epochs), batch_size=batch_size, seed=seed,
        forward=maybe_compile(wrap_ddp(model, ctx.hw), ctx.hw), after_step=masked.enforce,
        after_load=masked.enforce, density=lambda: density, fixed=fixed or {}))
    masked.remove()
    masked.enforce()
    return model.eval(), result
