"""Every random stream of a run, derived from `--seed` by name in one place.

Streams are independent of each other (a method that draws more numbers never shifts another stream), and a
run is reproducible from its config alone. The offsets are those earlier versions used, so runs reproduce.
"""

from __future__ import annotations

STREAMS = {
    "init": 0,  # initial weights (torch's global generator, seeded before the model is built)
    "mining-data": 0,  # order and augmentation of the training data while mining
    "scores": 1,  # Gem-Miner's initial scores
    "channel-scores": 2,  # Gem-Miner's channel scores (--channel-sparsity stage 1)
    "training-data": 7,  # order and augmentation while training with a fixed mask (fine-tuning, IMP rounds)
    "random-mask": 11,
    "magnitude-ties": 13,
    "snip-ties": 17,
    "grasp-ties": 19,
    "synflow-ties": 23,
    "edge-popup-scores": 29,
    "smart-ratio-mask": 31,
    "scoring-data": 41,  # the examples SNIP and GraSP score on
    "sanity-shuffle": 101,
    "sanity-reinit": 1000,
}


def seed_for(seed: int, stream: str) -> int:
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}")
    return seed + STREAMS[stream]


def generator(seed: int, stream: str):
    """A CPU torch.Generator for ``stream``."""
    import torch

    return torch.Generator().manual_seed(seed_for(seed, stream))
