"""The configuration of a `mine` run: every option declared once (default, help, range, choices), resolved once
(per-method reference defaults filled in), then frozen and stored as config.json.

Options left at ``None`` mean "the reference's value": `resolve` replaces them with the value that runs (the
method's reference init, the paper's lambda for the density, IMP's reference recipe for the model), so
config.json always records what actually ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pathlib import Path

from gemdeploy import user_code
from gemdeploy.data import DATASETS
from gemdeploy.errors import GemdeployError
from gemdeploy.files import file_sha256
from gemdeploy.files import state_sha256
from gemdeploy.models.init import live_init_state
from gemdeploy.models import MODELS
from gemdeploy.models.init import INITS
from gemdeploy.options import at_least, greater_than, in_range, option, optional, validate
from gemdeploy.registry import METHODS
from gemdeploy.sparsity import PATTERNS

SCHEDULES = ("step", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")

_GM, _IMP, _RUN = "Gem-Miner", "IMP (reference recipe unless set)", "Run"


def _nm_check(value: str) -> str | None:
    try:
        n, m = (int(v) for v in str(value).split(":"))
    except ValueError:
        return "must look like N:M (e.g. 2:4)"
    return None if 0 < n < m else "needs 0 < N < M"


def _lam_check(value) -> str | None:
    ok = value == "auto" or at_least(0)(value) is None
    return None if ok else "must be a number >= 0 or auto"


def _parse_lam(text: str):
    return "auto" if text.strip().lower() == "auto" else float(text)


def _device_check(value: str) -> str | None:
    ok = value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit())
    return None if ok else "must be auto, cpu, cuda or cuda:N"


def init_weights_sha256(init_from: str | None) -> str | None:
    """sha256 of the --init-from file (of the safetensors encoding, for weights given to gemdeploy.api)."""
    if init_from is None:
        return None
    if user_code.is_live(init_from):
        return state_sha256(live_init_state(init_from))
    return file_sha256(init_from)


@dataclass(frozen=True)
class MineConfig:
    model: str = option("resnet20", "Architecture: a built-in name (`gemdeploy methods` describes each), "
                        "torchvision:NAME (any torchvision classification model, untrained), or your own factory "
                        "path/to/file.py:FUNCTION or package.module:FUNCTION, called with input_shape=(C, H, W) and "
                        "num_classes (the file is executed).", choices=MODELS.names, kind="model",
                        also=user_code.is_spec, also_help=user_code.MODEL_FORMS,
                        check=lambda v: user_code.syntax_problem(v, torchvision=True))
    data: str = option("cifar10", "Data set: a built-in name, or your own path/to/file.py:FUNCTION or "
                       "package.module:FUNCTION returning train / val / test (images, labels) or Datasets (see the "
                       "README).", choices=DATASETS.names, kind="data set", also=user_code.is_spec,
                       also_help=user_code.DATA_FORMS, check=lambda v: user_code.syntax_problem(v, torchvision=False))
    init_from: str | None = option(None, "Start every method from these weights (a safetensors state dict of the "
                                   "model, e.g. a pre-trained network) instead of a fresh initialization; their "
                                   "sha256 is recorded.", metavar="FILE")
    method: str = option("gem-miner", "Ticket-finding method.", choices=METHODS.names, kind="method")
    sparsity: float = option(0.986, "Fraction of prunable weights removed, in [0, 1): 0.986 keeps 1.4%.",
                             check=in_range(0, 1, hi_open=True))
    pattern: str = option("unstructured", "Sparsity pattern: 2:4 is N:M from --nm along input channels; with channel, "
                          "--sparsity is the fraction of channels removed.", choices=PATTERNS.names, kind="pattern")
    nm: str = option("2:4", "N:M for --pattern 2:4: keep at most N of every M consecutive input channels.",
                     check=_nm_check)
    channel_sparsity: float | None = option(None, "Gem-Miner: first remove this fraction of the channels (a channel "
                                            "ticket), then mine --pattern inside the kept channels.",
                                            check=optional(in_range(0, 1, hi_open=True)), panel=_GM)
    epochs: int = option(150, "Mining epochs (per round for IMP).", check=at_least(1))
    finetune_epochs: int = option(150, "Epochs training the ticket with its mask fixed.", check=at_least(0))
    batch_size: int = option(128, "Global batch size.", check=at_least(1))
    lr: float = option(0.1, "Mining learning rate (SGD, cosine schedule).", check=greater_than(0))
    finetune_lr: float = option(0.01, "Fine-tuning learning rate (x0.1 at 53% and 80% of the epochs).",
                                check=greater_than(0))
    momentum: float = option(0.9, "SGD momentum of mining and fine-tuning.", check=in_range(0, 1, hi_open=True))
    weight_decay: float = option(1e-4, "Fine-tuning weight decay (scores are never decayed).", check=at_least(0))
    lam: float | str | None = option(None, "Gem-Miner's L2 score penalty; default: the paper's value for the density "
                                     "(1e-4 at <= 1.5%, 3e-5 at <= 4%, else 1e-5); auto: pick it by short runs on the "
                                     "validation split.", check=optional(_lam_check), parse=_parse_lam, metavar="LAMBDA",
                                     panel=_GM)
    freeze_period: int | None = option(None, "Gem-Miner: epochs between freezing rounds (default: 5 per 150 epochs).",
                                       check=optional(at_least(1)), panel=_GM)
    invert_freezing: bool = option(False, "Gem-Miner: freeze the highest |p| first (sanity's invert check).",
                                   cli=False)
    init: str | None = option(None, "Weight init (default: the method's reference: signed-constant for gem-miner and "
                              "edge-popup, else kaiming-normal).",
                              choices=lambda: list(INITS), kind="init")
    imp_lr: float | None = option(None, "IMP round learning rate (default 0.1).", check=optional(greater_than(0)),
                                  panel=_IMP)
    imp_momentum: float | None = option(None, "IMP round momentum (default: 0 for lenet300 as open_lth, else 0.9).",
                                        check=optional(in_range(0, 1, hi_open=True)), panel=_IMP)
    imp_weight_decay: float | None = option(None, "IMP round weight decay (default: 0 for lenet300, else 1e-4).",
                                            check=optional(at_least(0)), panel=_IMP)
    imp_schedule: str | None = option(None, "IMP round schedule; step is x0.1 at 50% and 75% (default: constant for "
                                      "lenet300, else step).", choices=lambda: list(SCHEDULES), kind="IMP schedule",
                                      panel=_IMP)
    imp_rewind_iter: int | None = option(None, "IMP: rewind to the weights after this many training iterations "
                                         "(default: 0 for lenet300 as open_lth; else the authors' point, 1.6% of a "
                                         "round: 1,000 of 62,400 iterations).",
                                         check=optional(at_least(0)), panel=_IMP)
    imp_prune_output: bool | None = option(None, "IMP: prune the output layer too (default: no for lenet300 as "
                                           "open_lth, yes otherwise).", panel=_IMP)
    imp_from: str | None = option(None, "IMP: reuse the levels of an earlier IMP run (same model, data, seed, "
                                  "recipe).", panel=_IMP)
    seed: int = option(0, "Random seed (runs are deterministic on CPU).")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", check=_device_check)
    compile: bool = option(False, "torch.compile the training step.")
    cuda_graph: bool = option(False, "CUDA: capture the whole training step (forward, backward, SGD, projection) in "
                              "one CUDA graph per phase and replay it every batch: far fewer kernel launches, the "
                              "bound of small networks on a GPU. Not with --compile or several processes.")
    data_dir: str | None = option(None, "Where cifar10 / cifar100 / imagefolder data lives (also passed to your "
                                  "data factory when it takes data_dir).")
    image_size: int | None = option(None, "imagefolder: the side images are resized and cropped to (default 224).",
                                    check=optional(at_least(8)))
    download: bool = option(False, "Let torchvision download CIFAR into --data-dir.")
    round_to: int = option(8, "Compaction keeps channel counts multiples of this.", check=at_least(1))
    world_size: int = option(1, "Data-parallel processes the run uses.", cli=False, check=at_least(1))
    projected_from: str | None = option(None, "The run this one was projected from (compact --pattern 2:4).", cli=False)
    model_sha256: str | None = option(None, "sha256 of the file defining --model's factory.", cli=False)
    data_sha256: str | None = option(None, "sha256 of the file defining --data's factory.", cli=False)
    init_sha256: str | None = option(None, "sha256 of the --init-from weights.", cli=False)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def validate(self) -> "MineConfig":
        """Every check that needs no data, model or torch: bad input fails at once, with one line."""
        validate(self)
        if self.channel_sparsity is not None and (self.pattern == "channel" or self.method != "gem-miner"):
            raise GemdeployError("--channel-sparsity combines a channel ticket with --pattern unstructured or 2:4 "
                                 "(Gem-Miner only); with --pattern channel, --sparsity is the channel fraction")
        if self.init_from is not None and self.init is not None:
            raise GemdeployError("--init and --init-from exclude each other: --init-from starts every method from "
                                 "the given weights")
        return self

    def check_files(self) -> "MineConfig":
        """A new run's files are there (cheap, no torch, none of the user's code run): --model/--data factory files
        and --init-from. A recorded run checks them when it rebuilds (gemdeploy.user_code), with its sha256."""
        for flag, value in (("--model", self.model), ("--data", self.data)):
            problem = user_code.presence_problem(value)
            if problem:
                raise GemdeployError(f"{flag} {value}: {problem}")
        if self.init_from is not None:
            if not user_code.is_live(self.init_from):
                if not Path(self.init_from).is_file():
                    raise GemdeployError(f"--init-from: no such file {self.init_from}")
                if Path(self.init_from).suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar"):
                    raise GemdeployError(f"--init-from takes a safetensors file (gemdeploy never unpickles {self.init_from}); "
                                         "convert it once with safetensors.torch.save_file(model.state_dict(), "
                                         "'weights.safetensors')")
        return self

    def resolve(self, world_size: int = 1, train_size: int | None = None) -> "MineConfig":
        """The config that runs: reference defaults filled in for everything left at None. ``train_size`` (the
        training split's length) places IMP's default rewind point; without it the rewind stays unresolved."""
        self.validate()
        method = METHODS.get(self.method)
        # A run projected to N:M (`compact --pattern 2:4 --out`) keeps its source's method, which need not mine N:M.
        projected_nm = self.projected_from is not None and PATTERNS.get(self.pattern).groups(self.nm) is not None
        if self.pattern not in method.patterns and not projected_nm:
            raise GemdeployError(f"method {self.method} does not support --pattern {self.pattern} "
                                 f"(it supports: {', '.join(method.patterns)})")
        # Each method fills in its own options; every method is asked, so config.json records every reference
        # value (an IMP option of a Gem-Miner run too), as it always has.
        defaults = {}
        for name in METHODS.names():
            defaults.update(METHODS.get(name).option_defaults(self, train_size))
        return dataclasses.replace(
            self,
            # Your own model's factory and weights are pinned: a later rebuild refuses a file that moved or changed.
            model=user_code.absolute(self.model), data=user_code.absolute(self.data),
            model_sha256=self.model_sha256 or user_code.source_sha256(self.model),
            data_sha256=self.data_sha256 or user_code.source_sha256(self.data),
            init_from=(self.init_from if self.init_from is None or user_code.is_live(self.init_from)
                       else str(Path(self.init_from).resolve())),
            init_sha256=self.init_sha256 or init_weights_sha256(self.init_from),
            init=None if self.init_from is not None else self.init or method.default_init,
            world_size=world_size,
            **defaults,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: object, where: str = "config.json") -> "MineConfig":
        if not isinstance(obj, dict):
            raise GemdeployError(f"{where} is not a JSON object")
        obj = dict(obj)
        extra = obj.pop("extra", None)  # gemdeploy 0.1 kept world_size there
        if isinstance(extra, dict) and "world_size" in extra and "world_size" not in obj:
            obj["world_size"] = extra["world_size"]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise GemdeployError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        try:
            cfg = cls(**obj)
            validate(cfg)
        except (TypeError, GemdeployError) as exc:
            raise GemdeployError(f"{where} is not a valid run configuration: {exc}") from None
        return cfg
