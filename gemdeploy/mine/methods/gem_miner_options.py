"""Gem-Miner's own options (`mine -h` lists them under --method gem-miner; config.json records them under
``method_options``). A light module: the help and the checks of a run's configuration read it without torch."""

from __future__ import annotations

from dataclasses import dataclass

from gemdeploy.errors import GemdeployError
from gemdeploy.options import OptionGroup, at_least, in_range, option, optional


def _lam_check(value) -> str | None:
    ok = value == "auto" or at_least(0)(value) is None
    return None if ok else "must be a number >= 0 or auto"


def _parse_lam(text: str):
    return "auto" if text.strip().lower() == "auto" else float(text)


@dataclass(frozen=True)
class GemMinerOptions(OptionGroup):
    channel_sparsity: float | None = option(None, "First remove this fraction of the channels (a channel ticket), then "
                                            "mine --pattern inside the kept channels.",
                                            check=optional(in_range(0, 1, hi_open=True)))
    lam: float | str | None = option(None, "The L2 score penalty; default: the paper's value for the density "
                                     "(1e-4 at <= 1.5%, 3e-5 at <= 4%, else 1e-5); auto: pick it by short runs on the "
                                     "validation split.", check=optional(_lam_check), parse=_parse_lam, metavar="LAMBDA")
    freeze_period: int | None = option(None, "Epochs between freezing rounds (default: 5 per 150 epochs).",
                                       check=optional(at_least(1)))
    invert_freezing: bool = option(False, "Freeze the highest |p| first (sanity's invert check).", cli=False)

    def cross_check(self, cfg) -> None:
        # by name: this refusal comes before torch is imported (the pattern objects import it)
        if self.channel_sparsity is not None and cfg.pattern == "channel":
            raise GemdeployError("--channel-sparsity combines a channel ticket with --pattern unstructured or 2:4 "
                                 "(Gem-Miner only); with --pattern channel, --sparsity is the channel fraction")

    def resolved(self, cfg, train_size: int | None) -> "GemMinerOptions":
        # The reference values live with the recipes (they import the training code, so not at module level: the
        # help stays light).
        from dataclasses import replace

        from gemdeploy.mine.recipes import paper_lambda

        return replace(self, lam=paper_lambda(cfg.density) if self.lam is None else self.lam,
                       freeze_period=self.freeze_period or max(1, round(5 * cfg.epochs / 150)))
