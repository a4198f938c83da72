"""Name -> implementation registries (models, data sets, methods, bench backends, export precisions).

Each registry is declared as one table of ``name: ("module:attribute", one-line summary)``: the names, their
order and their descriptions live there and nowhere else. A method's entry may add a third place, its options group
(a light module, so `mine -h` lists the group without importing the method). Implementations are imported only when asked for,
so listing choices (help texts, `gemdeploy methods`, a refused bad argument) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from gemdeploy.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, table: dict[str, tuple[str, ...]] | None = None):
        self.kind = kind
        self._where: dict[str, str] = {}
        self._summary: dict[str, str] = {}
        self._options_where: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        for name, (where, summary, *options) in (table or {}).items():
            self._where[name] = where
            self._summary[name] = summary
            if options:
                self._options_where[name] = options[0]

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Add an implementation at run time (tests, plugins); declared names belong in the table."""
        def decorate(item: T) -> T:
            if name in self._where or name in self._loaded:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._loaded[name] = item
            self._summary[name] = summary
            return item

        return decorate

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._where:
            raise unknown_choice(self.kind, name, self.names())
        module, attr = self._where[name].split(":")
        item = getattr(importlib.import_module(module), attr)
        self._loaded[name] = item
        return item

    def options(self, name: str):
        """The options group ``name`` declares (a gemdeploy.options.OptionGroup dataclass), or None."""
        if name not in self:
            raise unknown_choice(self.kind, name, self.names())
        where = self._options_where.get(name)
        if where is None:
            return getattr(self._loaded.get(name), "Options", None)  # one registered at run time carries its own
        module, attr = where.split(":")
        return getattr(importlib.import_module(module), attr)

    def names(self) -> list[str]:
        """Every name, in declaration order."""
        return list(dict.fromkeys([*self._where, *self._loaded]))

    def summary(self, name: str) -> str:
        if name not in self:
            raise unknown_choice(self.kind, name, self.names())
        return self._summary.get(name, "")

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._where or name in self._loaded


# The method table lives here, below every layer, because the run's configuration (gemdeploy.run.config) checks
# and resolves --method without importing the mine stage; gemdeploy.mine.methods exposes the same object.
_M = "gemdeploy.mine.methods"
METHODS: Registry = Registry("method", {
    "gem-miner": (f"{_M}.gem_miner:GemMiner", "Gem-Miner (Sreenivasan et al., 2022): scores trained at init, iterative freezing",
                  f"{_M}.gem_miner_options:GemMinerOptions"),
    "imp": (f"{_M}.imp:IMP", "iterative magnitude pruning with weight rewinding (Frankle et al.), 20% per round",
            f"{_M}.imp_options:ImpOptions"),
    "imp-ft": (f"{_M}.imp_ft:IMPFineTune", "IMP with learning-rate rewinding (Renda et al., 2020)",
               f"{_M}.imp_options:ImpOptions"),
    "random": (f"{_M}.random_prune:RandomPruning", "random positions, the same density in every layer"),
    "magnitude": (f"{_M}.magnitude:MagnitudeAtInit", "global magnitude of the initial weights"),
    "snip": (f"{_M}.snip:Snip", "SNIP (Lee et al., 2019): connection sensitivity |w * dL/dw| at init"),
    "grasp": (f"{_M}.grasp:Grasp", "GraSP (Wang et al., 2020): preserve gradient flow at init"),
    "synflow": (f"{_M}.synflow:SynFlow", "SynFlow (Tanaka et al., 2020): iterative, data-free"),
    "edge-popup": (f"{_M}.edge_popup:EdgePopup", "edge-popup (Ramanujan et al., 2020): per-layer top-k of trained scores"),
    "smart-ratio": (f"{_M}.smart_ratio:SmartRatio", "Smart-Ratio (Su et al., 2020): hand-made layer ratios, random positions"),
    "dense": (f"{_M}.dense:Dense", "no pruning: the dense reference, trained with the same recipe"),
})
