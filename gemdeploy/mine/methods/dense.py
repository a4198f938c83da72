"""The unpruned reference: an all-ones mask, trained with the same recipe as every ticket."""

from gemdeploy.sparsity.masks import Mask
from gemdeploy.mine.methods.base import Method, Ticket


class Dense(Method):
    name = "dense"
    # A dense model has no sparsity pattern: accepting --pattern 2:4 recorded a 2:4 run whose export then (rightly)
    # failed the 2:4 check. "unstructured" is the default, so a plain `--method dense` still works.
    patterns = ("unstructured",)

    def find_ticket(self, ctx) -> Ticket:
        return Ticket(Mask.ones_like(ctx.fresh_model()).cpu())
