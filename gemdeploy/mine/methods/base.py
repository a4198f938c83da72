"""The interface every ticket-finding method implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gemdeploy.mine.context import RunContext
from gemdeploy.mine.recipes import finetune_recipe
from gemdeploy.sparsity.masks import Mask
from gemdeploy.sparsity.patterns import UNSTRUCTURED
from gemdeploy.train.loop import Recipe


@dataclass
class Ticket:
    mask: Mask
    scores: dict[str, torch.Tensor] | None = None  # the method's final scores, where it has them
    info: dict = field(default_factory=dict)  # method-specific results (e.g. IMP's per-level accuracies)


@dataclass
class TicketTraining:
    """How a method's ticket is trained once its mask is fixed: the starting weights and the recipe."""

    start: dict[str, torch.Tensor]  # state_dict to start from (the mask is applied on top)
    recipe: Recipe
    starts_from: str  # "init", "rewind point", "last round" (for tables)


class Method:
    """Finds a mask at the configured density; training the ticket afterwards is described by `ticket_training`.
    A method with options of its own declares them as an OptionGroup in a light module named on its METHODS entry
    (e.g. gem_miner_options.py); the run's configuration holds them as ``config.method_options``."""

    name: str = ""
    has_scores: bool = False  # saves scores.safetensors (sanity's invert ranks them)
    mines: bool = False  # has a mining loop: sanity's invert re-mines with the freezing order reversed
    default_init: str = "kaiming-normal"  # the reference's initialization
    patterns: tuple[str, ...] = (UNSTRUCTURED.name,)  # names in gemdeploy.sparsity.PATTERNS

    def find_ticket(self, ctx: RunContext) -> Ticket:
        raise NotImplementedError

    def weight_copies(self, config) -> float | None:
        """A measured lower bound on the fp32 copies of the network's weights that finding the ticket holds at once
        (gemdeploy.mine.memory refuses a network that cannot fit); None where it was not measured: no check."""
        return None

    def ticket_training(self, ctx: RunContext) -> TicketTraining:
        """The shared fine-tuning (the Gem-Miner paper's recipe) from the initial weights."""
        return TicketTraining(ctx.init_state, finetune_recipe(ctx.config), "init")
