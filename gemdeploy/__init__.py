"""gemdeploy: lottery tickets at initialization (Gem-Miner), compacted and shipped as fast engines."""

__version__ = "0.2.0"
