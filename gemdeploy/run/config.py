"""The configuration of a `mine` run: every option declared once (default, help, range, choices), resolved once
(per-method reference defaults filled in), then frozen and stored as config.json.

Options left at ``None`` mean "the reference's value": `resolve` replaces them with the value that runs (the
method's reference init; the method's own options group fills in its own, e.g. the paper's lambda for the density,
IMP's reference recipe for the model), so config.json always records what actually ran.

A method's own options (Gem-Miner's lambda, IMP's round recipe) are not fields here: each method declares them as
an OptionGroup next to itself, named on its METHODS entry, and the configuration holds the group of its --method
as ``method_options`` (config.json: ``"method_options": {...}``). They are still given by name, as on the command
line (``MineConfig(method="imp", imp_lr=0.05)``), and read by name (``cfg.imp_lr``); another method's option is
refused in one line. config.json of gemdeploy before 0.3 held them flat beside the shared options; `from_json`
reads that too.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

from gemdeploy import user_code
from gemdeploy.data import DATASETS
from gemdeploy.errors import GemdeployError
from gemdeploy.files import file_sha256
from gemdeploy.files import state_sha256
from gemdeploy.models.init import live_init_state
from gemdeploy.models import MODELS
from gemdeploy.models.init import INITS
from gemdeploy.options import OptionGroup, at_least, defaults, flag_name, greater_than, in_range, option, optional
from gemdeploy.options import validate
from gemdeploy.registry import METHODS
from gemdeploy.sparsity import PATTERNS

DEVICES = ("auto", "cpu", "cuda")


def _nm_check(value: str) -> str | None:
    try:
        n, m = (int(v) for v in str(value).split(":"))
    except ValueError:
        return "must look like N:M (e.g. 2:4)"
    return None if 0 < n < m else "needs 0 < N < M"


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
    epochs: int = option(150, "Mining epochs (per round for IMP).", check=at_least(1))
    finetune_epochs: int = option(150, "Epochs training the ticket with its mask fixed.", check=at_least(0))
    batch_size: int = option(128, "Global batch size.", check=at_least(1))
    lr: float = option(0.1, "Mining learning rate (SGD, cosine schedule).", check=greater_than(0))
    finetune_lr: float = option(0.01, "Fine-tuning learning rate (x0.1 at 53% and 80% of the epochs).",
                                check=greater_than(0))
    momentum: float = option(0.9, "SGD momentum of mining and fine-tuning.", check=in_range(0, 1, hi_open=True))
    weight_decay: float = option(1e-4, "Fine-tuning weight decay (scores are never decayed).", check=at_least(0))
    init: str | None = option(None, "Weight init (default: the method's reference: signed-constant for gem-miner and "
                              "edge-popup, else kaiming-normal).",
                              choices=lambda: list(INITS), kind="init")
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
    # The --method's own options group (gemdeploy.options.OptionGroup); None: the method declares none.
    method_options: Any = field(default=None)

    def __post_init__(self):
        object.__setattr__(self, "method_options", _group_for(self.method, self.method_options))

    def __getattr__(self, name: str):
        """A method's option reads by name, as it is given (``cfg.lam``)."""
        group = self.__dict__.get("method_options")
        if group is not None and not name.startswith("_") and name in _field_names(type(group)):
            return getattr(group, name)
        raise AttributeError(f"{type(self).__name__} has no option {name!r} (--method {self.__dict__.get('method')})")

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def validate(self) -> "MineConfig":
        """Every check that needs no data, model or torch: bad input fails at once, with one line."""
        validate(self)
        if self.method_options is not None:
            validate(self.method_options)
            self.method_options.cross_check(self)
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
            # the method fills in its own options (config.json records what ran)
            method_options=None if self.method_options is None else self.method_options.resolved(self, train_size),
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def flat_json(self) -> dict:
        """to_json with the method's options beside the shared ones (as they are given, by name)."""
        obj = self.to_json()
        own = obj.pop("method_options") or {}
        return {**obj, **own}

    @classmethod
    def from_json(cls, obj: object, where: str = "config.json") -> "MineConfig":
        if not isinstance(obj, dict):
            raise GemdeployError(f"{where} is not a JSON object")
        obj = dict(obj)
        extra = obj.pop("extra", None)  # gemdeploy 0.1 kept world_size there
        if isinstance(extra, dict) and "world_size" in extra and "world_size" not in obj:
            obj["world_size"] = extra["world_size"]
        flat = {k: obj.pop(k) for k in list(obj) if k in _owners()}  # gemdeploy < 0.3: every method's options, flat
        if flat and "method_options" not in obj and isinstance(obj.get("method"), str) and obj["method"] in METHODS:
            group = METHODS.options(obj["method"])
            # the run's own method's options; the others' were reference values of methods it did not run
            obj["method_options"] = {k: v for k, v in flat.items() if group and k in _field_names(group)} or None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise GemdeployError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        try:
            cfg = cls(**obj)
            validate(cfg)
            if cfg.method_options is not None:
                validate(cfg.method_options)
        except (TypeError, GemdeployError) as exc:
            raise GemdeployError(f"{where} is not a valid run configuration: {exc}") from None
        return cfg


# --- the methods' own options -------------------------------------------------------------------------------
def _field_names(group: type) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


def method_option_groups() -> dict[type, list[str]]:
    """Every options group a method declares -> the methods that take it, in the METHODS table's order."""
    groups: dict[type, list[str]] = {}
    for name in METHODS.names():
        group = METHODS.options(name)
        if group is not None:
            groups.setdefault(group, []).append(name)
    return groups


def _owners() -> dict[str, list[str]]:
    """A method option's name -> the methods that take it."""
    return {f.name: names for group, names in method_option_groups().items() for f in dataclasses.fields(group)}


def _group_for(method: str, value: Any) -> OptionGroup | None:
    """``value`` (a group, its JSON object, or None for the defaults) as the options group of ``method``."""
    group = METHODS.options(method) if isinstance(method, str) and method in METHODS else None
    if group is None:
        if isinstance(value, dict) and value:
            raise GemdeployError(f"method {method} takes no options of its own, got {', '.join(sorted(value))}")
        return None
    if value is None or (isinstance(value, OptionGroup) and not isinstance(value, group)):
        return group()  # a configuration given another --method (dataclasses.replace) starts from its defaults
    if isinstance(value, dict):
        unknown = set(value) - _field_names(group)
        if unknown:
            raise GemdeployError(f"unknown {method} option(s): {', '.join(sorted(unknown))}")
        return group(**value)
    return value


def _with_flat_options(cfg: "MineConfig", given: dict[str, Any]) -> None:
    """Method options given by name: the --method's go into its group; another method's is refused in one line
    (its value is checked first, so a bad value gets its own message), unless it is that option's default."""
    group = cfg.method_options
    own = _field_names(type(group)) if group is not None else set()
    owners = _owners()
    for name, value in given.items():
        if name in own or cfg.method not in METHODS:  # an unknown --method is refused by validate, with the choices
            continue
        other = METHODS.options(owners[name][0])
        if value == defaults(other)[name]:
            continue
        validate(dataclasses.replace(other(), **{name: value}))
        flag = flag_name(next(f for f in dataclasses.fields(other) if f.name == name))
        raise GemdeployError(f"{flag} is an option of --method {' / '.join(owners[name])}; --method {cfg.method} "
                             "does not take it")
    mine = {k: v for k, v in given.items() if k in own}
    if mine:
        object.__setattr__(cfg, "method_options", dataclasses.replace(group, **mine))


def _accept_method_options(init):
    """MineConfig(...) and dataclasses.replace(cfg, ...) take a method's options by name too."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        owners = _owners()
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in owners}
        init(self, *args, **kwargs)
        if given:
            _with_flat_options(self, given)

    return __init__


MineConfig.__init__ = _accept_method_options(MineConfig.__init__)  # type: ignore[method-assign]
