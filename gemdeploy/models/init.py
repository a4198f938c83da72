"""Weight initialization schemes applied to a freshly built model.

- ``signed-constant`` (Gem-Miner, edge-popup): the sign of the default init times gain / sqrt(fan_in), ReLU gain;
- ``kaiming-normal`` (IMP, SNIP, GraSP, SynFlow, ... as their references): N(0, gain^2 / fan_in), ReLU gain.
Biases start at zero in both.
"""

from __future__ import annotations

# torch and the rest load inside the functions: the run's configuration imports INITS, and `--help` stays instant.
import math

INITS = ("signed-constant", "kaiming-normal")
RELU_GAIN = math.sqrt(2.0)


def _fan_in(w) -> int:
    return w.shape[1] * (w[0][0].numel() if w.dim() > 2 else 1)


def initialize(model, scheme: str):
    import torch
    from torch import nn

    from gemdeploy.errors import unknown_choice
    from gemdeploy.sparsity.masks import PRUNABLE_TYPES

    if scheme not in INITS:
        raise unknown_choice("init", scheme, INITS)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, PRUNABLE_TYPES):
                continue
            std = RELU_GAIN / math.sqrt(_fan_in(m.weight))
            if scheme == "signed-constant":
                sign = torch.where(m.weight >= 0, 1.0, -1.0)
                m.weight.copy_(sign * std)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                m.bias.zero_()
    return model


# --- starting from given weights (--init-from) ---------------------------------------------------------
def live_init_state(value: str) -> dict:
    """The state dict gemdeploy.api was given as initial weights (a ``python:NAME`` spec)."""
    import torch

    from gemdeploy.errors import GemdeployError
    from gemdeploy.user_code import live_object, parse

    state = live_object(parse(value), "initial weights")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise GemdeployError("the initial weights given to gemdeploy.api must be a state dict (name -> tensor)")
    return state


def given_weights(init_from: str, sha256: str | None, model, model_name: str) -> dict:
    """The --init-from weights as a state dict of ``model``: the file checked against the sha256 the run recorded,
    every tensor of the model present with its shape (BatchNorm's ``num_batches_tracked`` may be missing), nothing
    extra. Anything else is refused with one line."""
    import torch

    from gemdeploy.errors import GemdeployError
    from gemdeploy.files import file_sha256, load_tensors
    from gemdeploy.user_code import is_live

    if is_live(init_from):
        state, where = live_init_state(init_from), "the initial weights"
    else:
        where = init_from
        state = load_tensors(init_from)
        if sha256 and file_sha256(init_from) != sha256:
            raise GemdeployError(f"{init_from} changed since this run recorded it (sha256 differs); restore it or "
                                 "mine again")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = ([f"{len(missing)} tensor(s) of the model missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unknown (e.g. {extra[0]})"] if extra else [])
        raise GemdeployError(f"{where} does not fit {model_name}: {'; '.join(parts)}")
    out = {}
    for k, ref in expected.items():
        if k not in state:
            out[k] = ref.detach().clone()
            continue
        v = state[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise GemdeployError(f"{where} does not fit {model_name}: {k} has shape {tuple(v.shape)}, the model's "
                                 f"is {tuple(ref.shape)}")
        if ref.is_floating_point() != v.is_floating_point():
            raise GemdeployError(f"{where} does not fit {model_name}: {k} is {v.dtype}, the model's is {ref.dtype}")
        if not v.is_floating_point() or bool(torch.isfinite(v).all()):
            out[k] = v.detach().to(ref.dtype).clone()
        else:
            raise GemdeployError(f"{where}: {k} holds NaN or infinite values")
    return out
