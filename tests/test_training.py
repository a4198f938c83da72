import torch

from gemdeploy.data import load_data
from gemdeploy.train.masked import MaskedModel
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.models import build_model
from gemdeploy.train.loop import Hardware, sgd, train_epoch


def test_pruned_weights_stay_exactly_zero_through_sgd_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    data = load_data("digits")
    model = build_model("conv4", data.input_shape, data.num_classes)
    mask = Mask({k: (torch.rand(w.shape) > 0.8).float() for k, w in prunable_weights(model).items()})
    masked = MaskedModel(model, mask)
    opt = sgd(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    hw = Hardware.resolve("cpu")
    model.train()
    train_epoch(model, opt, data.train, hw, epoch=0, seed=0, batch_size=64)
    for k, w in prunable_weights(model).items():
        assert torch.all(w[mask[k] == 0] == 0), k
        assert torch.count_nonzero(w[mask[k] == 1]) > 0.99 * mask[k].sum()  # the kept weights did train
        buf = opt.state[w]["momentum_buffer"]
        assert torch.all(buf[mask[k] == 0] == 0), k


def test_training_is_deterministic_on_cpu():
    def one():
        torch.manual_seed(0)
        data = load_data("digits")
        model = build_model("lenet300", data.input_shape, data.num_classes)
        opt = sgd(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0)
        model.train()
        train_epoch(model, opt, data.train, Hardware.resolve("cpu"), epoch=3, seed=5, batch_size=32)
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(one(), one())
