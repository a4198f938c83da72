"""Every method's reference recipe, read from the reference's own code, in one place.

Gem-Miner (ksreenivasan/pruning_is_enough, `hc_iter`, configs/hypercube/resnet20/*): signed-constant weights,
mining SGD lr 0.1 cosine, no weight decay; fine-tuning from the initial weights with the mask fixed, SGD lr 0.01,
momentum 0.9, weight decay 1e-4, x0.1 at epochs 80 and 120 of 150; lambda by density (below).

IMP (iterative magnitude pruning with rewinding), 20% of the remaining weights per round, global magnitude:
  * lenet300 follows open_lth's mnist_lenet_300_100: kaiming-normal, plain SGD lr 0.1 (no momentum, no weight
    decay, no schedule), 40 epochs per round, rewind to iteration 0, the output layer never pruned;
  * every other model follows the authors' configs/imp/resnet20.yml (= open_lth's cifar_resnet_20): kaiming-normal,
    SGD lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 at 50% and 75% of the round (epochs 80 and 120 of 160),
    rewind to iteration 1000 of the 62,400 of a round (1.6%: the same fraction of a shorter round here, see
    `ImpReference.rewind_for`), every layer pruned (first and output included).
  The ticket is trained from the rewind point with the round recipe (the reference's last level is one more
  round); IMP-FT (learning-rate rewinding) trains it from the last round's weights with the schedule rewound.

SNIP, GraSP, SynFlow (ganguli-lab/Synaptic-Flow): kaiming-normal, scored in eval mode on 10 examples per class
(one augmented batch), global; SynFlow 100 iterations on an exponential schedule, data-free.

Known departures, stated wherever results are reported: every model carries non-affine BatchNorm (open_lth's
LeNet has none, its ResNet has affine BatchNorm; the authors' IMP uses non-affine as here), because exact channel
compaction needs a dead channel to output exactly zero; the ticket of a non-IMP method gets the shared
fine-tuning (the Gem-Miner paper's), not its own paper's training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemdeploy.train.loop import PAPER_MILESTONES, Recipe

IMP_MILESTONES = (80 / 160, 120 / 160)


def paper_lambda(density: float) -> float:
    """The authors' grid-searched lambda for ResNet-20 on CIFAR-10, by target density (1.44% and 0.59%: 1e-4;
    3.72%: 3e-5; 20%: 1e-5)."""
    if density <= 0.015:
        return 1e-4
    if density <= 0.04:
        return 3e-5
    return 1e-5


def finetune_recipe(cfg) -> Recipe:
    """The shared fine-tuning of every non-IMP ticket (the Gem-Miner paper's)."""
    return Recipe(cfg.finetune_lr, cfg.momentum, cfg.weight_decay, "step", PAPER_MILESTONES)


@dataclass(frozen=True)
class ImpReference:
    source: str
    recipe: Recipe
    rewind_iter: int  # the reference's rewind point, in iterations of its own round
    round_iterations: int  # the reference's round: epochs x iterations per epoch
    prune_output: bool
    epochs_per_round: int

    def rewind_for(self, round_iterations: int) -> int:
        """The reference's point in training applied to a round of ``round_iterations``: the same fraction of the
        round (the authors' 1,000 of 62,400 ResNet-20 iterations = 1.6%), so a shorter round (a CPU budget, a
        small data set) is not rewound to a point past most of its own training."""
        if self.rewind_iter == 0:
            return 0
        return max(1, round(self.rewind_iter * round_iterations / self.round_iterations))


OPEN_LTH_LENET = ImpReference("open_lth mnist_lenet_300_100", Recipe(0.1, 0.0, 0.0, "constant", ()), 0,
                              40 * 469, False, 40)
AUTHORS_RESNET20 = ImpReference("pruning_is_enough configs/imp/resnet20.yml (open_lth cifar_resnet_20)",
                                Recipe(0.1, 0.9, 1e-4, "step", IMP_MILESTONES), 1000, 160 * 390, True, 160)  # full batches


def imp_reference(model: str) -> ImpReference:
    return OPEN_LTH_LENET if model == "lenet300" else AUTHORS_RESNET20


def imp_recipe(cfg) -> Recipe:
    """IMP's round recipe as resolved in ``cfg`` (reference values unless overridden)."""
    milestones = IMP_MILESTONES if cfg.imp_schedule == "step" else ()
    return Recipe(cfg.imp_lr, cfg.imp_momentum, cfg.imp_weight_decay, cfg.imp_schedule, milestones)
