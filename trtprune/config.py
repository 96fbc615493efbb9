"""Settings of a run, as frozen dataclasses with commented defaults (no heavy imports here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from trtprune.errors import TrtpruneError
from trtprune.latency.devices import DEFAULT_DEVICE


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01  # peak learning rate; the weights are pretrained, so 10x below training from scratch
    momentum: float = 0.9
    weight_decay: float = 1e-4  # as the CIFAR ResNets were trained (He et al. 2016)
    distill: float = 0.0  # weight of the distillation loss from the unpruned teacher; 0 turns it off
    temperature: float = 4.0  # softening of the teacher's and student's logits for distillation
    # NHWC (True) or NCHW (False) memory format for training; None: the faster of the two, timed on this machine
    channels_last: bool | None = None
    # "fp32", "bf16" (autocast) or "auto": the faster of fp32 and (where the hardware computes it natively) bf16
    precision: str = "auto"
    train_device: str = "auto"  # "cpu", "cuda" or "auto": an NVIDIA GPU when torch sees one, else the CPU
    compile: bool = False  # torch.compile the student and the teacher: minutes to compile, then faster steps
    train_limit: int = 0  # use only the first N training images (0 = all); for quick runs
    seed: int = 0
    # Training images whose batches re-estimate every BatchNorm's statistics before the first step (0 = off):
    # pruning leaves statistics of the unpruned network (EagleEye, Li et al. 2020). Measured on the plan of the
    # default `make engine`: 10.14 % top-1 right after pruning, 23.5 % after recalibrating on 2,000 images.
    recalibrate: int = 2000
    warmup: float = 0.0  # epochs of linear learning-rate warm-up from 0 before the cosine decay


@dataclass(frozen=True)
class RunConfig:
    model: str = "resnet56"
    weights: str | None = None  # None: the model's published checkpoint from the data root
    device: str = DEFAULT_DEVICE
    method: str = "locp"  # a key of trtprune.searching.SEARCHERS
    budget: str | None = "0.5x"  # latency budget, fraction of the baseline ("0.5x") or "1.2ms"; None: no search
    ratio: float = 0.5  # uniform pruning without a budget: fraction of every channel group removed
    round_to: int = 8  # uniform and flops: keep a multiple of this many channels per group
    importance: str = "fisher"  # which channels go, and the search's cost: see trtprune.pruning.importance
    ignore: list[str] = field(default_factory=list)  # modules whose output channels are kept whole
    floor: float = 0.1  # every group keeps at least this fraction of its channels (the search's candidates)
    # "criterion:floor" variants whose plans the accuracy proxy ranks with the search's own ([] = no ranking)
    ranked: list[str] = field(default_factory=list)
    stairs_from: str = "layers"  # "layers" (the latency table) or "engine" (TensorRT: whole-engine profiles)
    depth: bool = True  # locp/knapsack/lap remove residual blocks before channels (trtprune.searching.depth)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # int8 devices: the images the delivered model's scales are calibrated on - a folder of images, an image
    # list (.txt) or a .npy/.npz (trtprune.deploy.quantize.calib_images); None: the training set
    calib: str | None = None
    calib_images: int = 512  # how many of them (evenly spaced)
    eval_limit: int = 0  # evaluate on the first N test images (0 = all 10,000)
    input_shape: str | None = None  # "3x224x224": one image's C x H x W (None: the model's own, 3x32x32 for CIFAR)
    mean: str | None = None  # "0.485,0.456,0.406": per-channel normalisation the model was trained with (None:
    std: str | None = None  # the model's own, ImageNet's by default)
    # what the model is trained and scored for: a built-in task's name, or "file.py:task" (trtprune.tasks);
    # None: classification (cross-entropy, top-1)
    task: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> RunConfig:
        """The inverse of ``to_dict``; unknown keys or values of the wrong type are an error naming them
        (absent keys take defaults)."""
        if not isinstance(d, dict):
            raise TrtpruneError(
                f"'{source}' is not a run configuration", why=f"expected a JSON object, found {type(d).__name__}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        ft_fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
        ft = d.get("finetune", {})
        ft = ft if isinstance(ft, dict) else {"<not a table>": ft}
        unknown = sorted(set(d) - fields) + sorted(f"finetune.{k}" for k in set(ft) - ft_fields)
        if unknown:
            raise TrtpruneError(
                f"'{source}' has unknown settings: {', '.join(unknown)}",
                fix="it was written by another version of trtprune; start the run over with --fresh",
            )
        cfg = cls(**{**d, "finetune": FinetuneConfig(**ft)})
        wrong = [k for k, v in _values(cfg) if not _fits(v, _TYPES[k])]
        if wrong:
            raise TrtpruneError(
                f"'{source}' has settings of the wrong type: {', '.join(wrong)}",
                fix="it was edited or written by another version of trtprune; start the run over with --fresh",
            )
        return cfg


def _values(cfg: RunConfig):
    for f in dataclasses.fields(cfg):
        if f.name == "finetune":
            yield from ((f"finetune.{g.name}", getattr(cfg.finetune, g.name)) for g in dataclasses.fields(cfg.finetune))
        else:
            yield f.name, getattr(cfg, f.name)


def _fits(value, types: tuple) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


# The JSON types a setting of each annotation may hold (ints are accepted where floats are expected).
_JSON_TYPES = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "bool | None": (bool, type(None)),
    "str": (str,),
    "str | None": (str, type(None)),
    "list[str]": (list,),
}
_TYPES = {
    **{f"finetune.{f.name}": _JSON_TYPES[f.type] for f in dataclasses.fields(FinetuneConfig)},
    **{f.name: _JSON_TYPES[f.type] for f in dataclasses.fields(RunConfig) if f.name != "finetune"},
}


def parse_ranked(items) -> list[tuple[str, float]]:
    """``["fisher:0.1", "taylor:0.25"]`` -> ``[("fisher", 0.1), ("taylor", 0.25)]``; a bad item is an error
    naming it."""
    from trtprune.pruning.importance import IMPORTANCE

    out = []
    for item in items:
        criterion, _, floor = str(item).partition(":")
        try:
            value = float(floor) if floor else 0.1
        except ValueError:
            value = -1.0
        if criterion not in IMPORTANCE or not 0 < value < 1:
            raise TrtpruneError(
                f"'{item}' is not a ranked variant",
                why="a variant is an importance criterion and a floor, e.g. fisher:0.1 or taylor:0.25",
                fix=f"criteria: {', '.join(IMPORTANCE)}; floors: fractions of a group's channels between 0 and 1",
            )
        out.append((criterion, value))
    return out
