"""The unpruned reference: an all-ones mask, trained with the same recipe as every ticket."""

from gemdeploy.sparsity import PATTERNS
from gemdeploy.sparsity.masks import Mask
from gemdeploy.mine.methods.base import Method, Ticket


class Dense(Method):
    name = "dense"
    patterns = tuple(PATTERNS.names())  # a dense model fits every pattern

    def find_ticket(self, ctx) -> Ticket:
        return Ticket(Mask.ones_like(ctx.fresh_model()).cpu())
