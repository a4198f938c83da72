"""Ticket-finding methods, one per file, registered by name (the `--method` choices)."""

from gemdeploy.miners.base import METHODS, Method, Ticket  # noqa: F401
from gemdeploy.miners import gem_miner, dense  # noqa: E402,F401
from gemdeploy.miners import (edge_popup, grasp, imp, imp_ft, magnitude, random_prune, smart_ratio,  # noqa: E402,F401
                              snip, synflow)
