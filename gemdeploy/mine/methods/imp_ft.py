"""IMP with learning-rate rewinding (Renda et al., 2020): each round keeps the weights trained in the previous
round (pruned ones zeroed) and restarts the learning-rate schedule; no weight rewinding. The ticket is trained
the same way: from the last round's weights, schedule rewound."""

from gemdeploy.errors import GemdeployError
from gemdeploy.mine.methods.base import TicketTraining
from gemdeploy.mine.methods.imp import IterativeMagnitude, _load_level
from gemdeploy.mine.recipes import imp_recipe
from gemdeploy.run import layout


class IMPFineTune(IterativeMagnitude):
    name = "imp-ft"
    rewind = False

    def ticket_training(self, ctx) -> TicketTraining:
        levels = sorted((ctx.run / layout.IMP_LEVELS).glob("level-*.safetensors"))
        if not levels:
            raise GemdeployError(f"{ctx.run.path} has no IMP levels to continue from")
        _, trained, _ = _load_level(levels[-1])
        return TicketTraining(trained, imp_recipe(ctx.config), "last round")
