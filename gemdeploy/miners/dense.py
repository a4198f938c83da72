"""The unpruned reference: an all-ones mask, trained with the same recipe as every ticket."""

from gemdeploy.masks import Mask
from gemdeploy.miners.base import METHODS, Method, Ticket


@METHODS.register("dense")
class Dense(Method):
    name = "dense"
    patterns = ("unstructured", "2:4", "channel")

    def find_ticket(self, ctx) -> Ticket:
        return Ticket(Mask.ones_like(ctx.fresh_model()).cpu())
