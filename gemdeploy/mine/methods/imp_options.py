"""IMP's own options, shared by imp and imp-ft (`mine -h` lists them under their names; config.json records them
under ``method_options``). Left at None they take the reference recipe of the model (gemdeploy.mine.recipes). A
light module: the help and the checks of a run's configuration read it without torch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gemdeploy.options import OptionGroup, at_least, greater_than, in_range, option, optional

SCHEDULES = ("step", "cosine", "constant")


@dataclass(frozen=True)
class ImpOptions(OptionGroup):
    note = "reference recipe unless set"

    imp_lr: float | None = option(None, "IMP round learning rate (default 0.1).", check=optional(greater_than(0)))
    imp_momentum: float | None = option(None, "IMP round momentum (default: 0 for lenet300 as open_lth, else 0.9).",
                                        check=optional(in_range(0, 1, hi_open=True)))
    imp_weight_decay: float | None = option(None, "IMP round weight decay (default: 0 for lenet300, else 1e-4).",
                                            check=optional(at_least(0)))
    imp_schedule: str | None = option(None, "IMP round schedule; step is x0.1 at 50% and 75% (default: constant for "
                                      "lenet300, else step).", choices=lambda: list(SCHEDULES), kind="IMP schedule")
    imp_rewind_iter: int | None = option(None, "IMP: rewind to the weights after this many training iterations "
                                         "(default: 0 for lenet300 as open_lth; else the authors' point, 1.6% of a "
                                         "round: 1,000 of 62,400 iterations).", check=optional(at_least(0)))
    imp_prune_output: bool | None = option(None, "IMP: prune the output layer too (default: no for lenet300 as "
                                           "open_lth, yes otherwise).")
    imp_from: str | None = option(None, "IMP: reuse the levels of an earlier IMP run (same model, data, seed, "
                                  "recipe).")

    def resolved(self, cfg, train_size: int | None) -> "ImpOptions":
        # The reference recipes import the training code: imported here, not at module level, so the help stays light.
        from gemdeploy.mine.recipes import imp_reference

        ref = imp_reference(cfg.model)
        per_epoch = None if train_size is None else max(1, train_size // cfg.batch_size)
        return replace(
            self,
            imp_lr=ref.recipe.lr if self.imp_lr is None else self.imp_lr,
            imp_momentum=ref.recipe.momentum if self.imp_momentum is None else self.imp_momentum,
            imp_weight_decay=ref.recipe.weight_decay if self.imp_weight_decay is None else self.imp_weight_decay,
            imp_schedule=self.imp_schedule or ref.recipe.schedule,
            imp_rewind_iter=(self.imp_rewind_iter if self.imp_rewind_iter is not None or per_epoch is None
                             else ref.rewind_for(cfg.epochs * per_epoch)),
            imp_prune_output=ref.prune_output if self.imp_prune_output is None else self.imp_prune_output,
        )
