"""Warnings about a finished ticket that a user must not miss: near-chance accuracy, a collapsed layer, fine-tuning
that lost what mining had. `mine` prints them and stores them in summary.json's ``warnings``."""

from __future__ import annotations

from gemdeploy.sparsity.masks import Mask

NEAR_CHANCE = 1.5  # accuracy below this multiple of chance (1 / classes) is "near chance"
COLLAPSE = 20.0  # a layer this many times sparser than the whole ticket has collapsed
LOST_POINTS = 0.10  # validation accuracy lost between the mined ticket and the trained one


def ticket_warnings(summary: dict, mask: Mask, num_classes: int, mined_val_acc: float | None) -> list[str]:
    out = []
    chance = 1.0 / max(2, num_classes)
    for key, what in (("test_acc", "test"), ("val_acc", "validation")):
        acc = summary.get(key)
        if acc is not None and acc < NEAR_CHANCE * chance:
            out.append(f"{what} accuracy {acc:.1%} is near chance ({chance:.0%} for {num_classes} classes): "
                       "the ticket is broken or the budget far too small (more --epochs / --finetune-epochs)")
            break
    density = mask.density()
    if 0 < density < 1:
        for name, m in mask.items():
            kept, size = int(m.count_nonzero()), m.numel()
            if kept / size < density / COLLAPSE:
                out.append(f"layer {name} collapsed: it keeps {kept:,} of {size:,} weights ({kept / size:.3%}), "
                           f"over {COLLAPSE:g}x sparser than the ticket ({density:.3%})")
    val = summary.get("val_acc")
    if mined_val_acc is not None and val is not None:
        if mined_val_acc < NEAR_CHANCE * chance and summary.get("method") != "dense":
            out.append(f"mining ended at {mined_val_acc:.1%} validation accuracy, near chance: the mined mask "
                       "carried little before training")
        elif val < mined_val_acc - LOST_POINTS:
            out.append(f"training the ticket lost {(mined_val_acc - val) * 100:.1f} points of validation accuracy "
                       f"({mined_val_acc:.1%} mined -> {val:.1%}); check --finetune-lr")
    return out
