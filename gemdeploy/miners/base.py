"""The interface every ticket-finding method implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gemdeploy.context import RunContext
from gemdeploy.masks import Mask
from gemdeploy.registry import Registry


@dataclass
class Ticket:
    mask: Mask
    scores: dict[str, torch.Tensor] | None = None  # the method's final scores, where it has them
    info: dict = field(default_factory=dict)  # method-specific results (e.g. IMP's per-level accuracies)


class Method:
    """Finds a mask at the configured density; fine-tuning afterwards is shared by every method."""

    name: str = ""
    has_scores: bool = False
    patterns: tuple[str, ...] = ("unstructured",)

    def find_ticket(self, ctx: RunContext) -> Ticket:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")
