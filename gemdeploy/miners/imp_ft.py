"""IMP with learning-rate rewinding (Renda et al., 2020): each round keeps the weights trained in the
previous round (pruned ones zeroed) and restarts the learning-rate schedule; no weight rewinding."""

from gemdeploy.miners.base import METHODS
from gemdeploy.miners.imp import IterativeMagnitude


@METHODS.register("imp-ft")
class IMPFineTune(IterativeMagnitude):
    name = "imp-ft"
    rewind = False
