"""Ticket-finding methods by name (the `--method` choices), one per file."""

from gemdeploy.registry import Registry

_M = "gemdeploy.mine.methods"
METHODS: Registry = Registry("method", {
    "gem-miner": (f"{_M}.gem_miner:GemMiner", "Gem-Miner (Sreenivasan et al., 2022): scores trained at init, iterative freezing"),
    "imp": (f"{_M}.imp:IMP", "iterative magnitude pruning with weight rewinding (Frankle et al.), 20% per round"),
    "imp-ft": (f"{_M}.imp_ft:IMPFineTune", "IMP with learning-rate rewinding (Renda et al., 2020)"),
    "random": (f"{_M}.random_prune:RandomPruning", "random positions, the same density in every layer"),
    "magnitude": (f"{_M}.magnitude:MagnitudeAtInit", "global magnitude of the initial weights"),
    "snip": (f"{_M}.snip:Snip", "SNIP (Lee et al., 2019): connection sensitivity |w * dL/dw| at init"),
    "grasp": (f"{_M}.grasp:Grasp", "GraSP (Wang et al., 2020): preserve gradient flow at init"),
    "synflow": (f"{_M}.synflow:SynFlow", "SynFlow (Tanaka et al., 2020): iterative, data-free"),
    "edge-popup": (f"{_M}.edge_popup:EdgePopup", "edge-popup (Ramanujan et al., 2020): per-layer top-k of trained scores"),
    "smart-ratio": (f"{_M}.smart_ratio:SmartRatio", "Smart-Ratio (Su et al., 2020): hand-made layer ratios, random positions"),
    "dense": (f"{_M}.dense:Dense", "no pruning: the dense reference, trained with the same recipe"),
})
