"""The training configuration: one dataclass, loadable from YAML, overridable by ``key=value``."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from ..data.folder import FolderOptions

__all__ = ["TrainConfig", "parse_override", "parse_duration"]

_CHOICES = {
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("cosine", "cosine_after_warmup", "constant"),
    "weight_decay_on": ("all", "names", "conv_fc"),
    "lighting": ("uint8", "float", "none"),
    "tau_schedule": ("exponential", "linear", "cosine", "constant"),
    "amp": ("off", "bfloat16", "float16"),
    "on_nonfinite": ("stop", "skip"),
    "folder_augment": ("auto", "crop", "resized_crop"),
}
# the keys that describe a folder data set's images (recu.data.folder.FolderOptions)
_FOLDER_KEYS = ("image_size", "in_channels", "mean", "std")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the paper's CIFAR-10 recipe (ResNet-20).

    ``binary`` holds :class:`recu.BinaryConfig` fields that change the ``preset``, e.g.
    ``{"clamp": "mask"}``; on the command line ``--set binary.clamp=mask``.

    ``model`` is a registry name (``recu models``) or a user's ``package.module:factory``, called with
    ``num_classes`` (and ``in_channels`` when it names that parameter) and converted by
    :func:`recu.binarize` with the ``binarize`` section's arguments (``keep_first_last``,
    ``keep_downsample``, ``skip``, ``tau``, ``enabled``; its ``preset`` replaces the top-level one).
    """

    name: str = "resnet20_recu"
    out_dir: str = "runs"
    # model
    model: str = "resnet20_1w1a"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str = "recu"
    binary: dict[str, Any] = field(default_factory=dict)
    # a user model's recu.binarize arguments (recu.models.user); empty: its defaults
    binarize: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = False
    subset: Optional[int] = None
    augment: bool = True
    # ImageNet PCA lighting noise (recu.data.imagenet): "uint8" adds it to the 0..255 crop before
    # ToTensor, as the authors' transform does; "float" to the [0, 1] image (AlexNet's strength); "none"
    lighting: str = "uint8"
    # dataset: folder (recu.data.folder): the side images are resized to (default 32), 3 channels (grey
    # images become RGB) or 1, the augmentation (auto: pad-and-crop up to 64 pixels, else random resized
    # crops; both flip), the [0, 1] pixels' mean and std (measured on the training images when not
    # given; the run's config.yaml records them) and the memory the decoded images may take (MB);
    # above it, workers decode them every epoch
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    folder_augment: str = "auto"
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    image_cache_mb: float = 2048.0
    workers: int = 4
    batch_size: int = 256
    eval_batch_size: int = 1000
    # optimisation
    epochs: int = 600
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # which parameters weight_decay applies to (recu.train.param_groups): "all" (the authors' CIFAR
    # script), "names" (names holding one of weight_decay_names: their ImageNet and two-stage scripts)
    # or "conv_fc" (conv/linear weights except full-precision 1x1 convs; recu before issue 10)
    weight_decay_on: str = "all"
    weight_decay_names: list[str] = field(default_factory=lambda: ["conv", "fc"])
    warmup_epochs: int = 5
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.0
    # ReCU
    tau_schedule: str = "exponential"
    tau_start: float = 0.85
    tau_end: float = 0.99
    tau_switch_off: Optional[float] = None
    tau_per_step: bool = False
    # distillation / two-stage
    teacher: Optional[str] = None
    init_from: Optional[str] = None
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    # mixed precision of the training step: "off", "bfloat16" (autocast, GPUs with bf16 units) or
    # "float16" (autocast with a GradScaler). The latent weights, tau and Q stay float32; evaluation
    # runs in float32. YAML's false/off read as "off".
    amp: str = "off"
    sync_bn: bool = False
    # a non-finite training step (its loss or gradients; with amp float16, whose GradScaler skips
    # non-finite gradients itself, uncounted, its loss or BatchNorm statistics) or weights: "stop" ends
    # the run with recu.train.TrainingDiverged naming the epoch and step (exit status 1 from recu
    # train) and saves nothing of that epoch, so last.pt and best.pt keep the last finite one (read
    # once per epoch: no host read per step). "skip" drops each such step (weights, optimizer state and
    # BatchNorm statistics stay as they were; one host read per step), counts them in the epoch
    # record's skipped_steps, and stops as "stop" does when a whole epoch was skipped.
    on_nonfinite: str = "stop"
    monitor: bool = True
    eval_every: int = 1
    progress: Optional[bool] = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        # YAML reads `amp: false` / `amp: off` as a boolean, which _coerce turns into "False"
        if self.amp in (False, None) or str(self.amp).lower() in ("false", "off", "none", "no"):
            self.amp = "off"
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config {name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"config warmup_epochs must lie in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.lr <= 0:
            raise ValueError(f"config lr must be > 0, got {self.lr}")
        if isinstance(self.weight_decay_names, str):  # --set weight_decay_names=conv
            self.weight_decay_names = [self.weight_decay_names]
        names = self.weight_decay_names
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"config weight_decay_names must be a non-empty list of non-empty name substrings, "
                             f"e.g. [conv, fc], got {names!r}")
        self.weight_decay_names = list(names)
        given = [k for k in _FOLDER_KEYS if getattr(self, k) is not None]
        if given and self.dataset != "folder":
            raise ValueError(f"config {', '.join(given)} apply to dataset: folder only (dataset is {self.dataset!r})")
        if self.dataset == "folder":
            self.folder_options()  # its checks, now rather than when the data is read
        if not isinstance(self.binarize, dict):
            raise ValueError(f"config binarize must be a mapping of recu.binarize arguments, got {self.binarize!r}")
        if self.binarize and ":" not in self.model:
            raise ValueError(f"config binarize applies to a user model (model: package.module:factory); "
                             f"{self.model!r} is a registry model, built binary")

    def folder_options(self) -> "FolderOptions":
        """The :class:`recu.data.folder.FolderOptions` of this config (``dataset: folder``)."""
        from ..data.folder import FolderOptions

        return FolderOptions(image_size=self.image_size or 32, in_channels=self.in_channels or 3,
                             augment=self.folder_augment, mean=self.mean, std=self.std, cache_mb=self.image_cache_mb)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "TrainConfig":
        """Load ``path`` (or the defaults when ``None``) and apply ``key=value`` overrides in order."""
        import yaml

        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"config file {path} must hold a mapping of keys to values")
            data.update(loaded)
        for item in overrides:
            key, value = parse_override(item)
            head, _, sub = key.partition(".")
            if sub:
                nested = dict(data.get(head) or {})
                nested[sub] = value
                data[head] = nested
            else:
                data[key] = value
        return cls.from_dict(_coerce(data))

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def parse_override(item: str) -> tuple[str, Any]:
    """``"lr=0.05"`` -> ("lr", 0.05); the value is read as YAML (numbers, booleans, null, lists)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """``"2h30m"`` -> 9000.0 seconds; also ``"90m"``, ``"1.5h"``, ``"45s"``, ``"5400"`` (plain seconds)."""
    raw = str(text).strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _DURATION_PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(f"duration {text!r} must look like 2h30m, 90m, 1.5h, 45s or a number of seconds") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"duration {text!r} must be a positive, finite time")
    return seconds


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    """Cast YAML scalars to the field types (so ``lr: 1e-3``, read by YAML as a string, works)."""
    hints = typing.get_type_hints(TrainConfig)
    out = dict(data)
    for key, value in data.items():
        hint = hints.get(key)
        if value is None or hint is None:
            continue
        # only Optional[X] is unwrapped: list[str] or dict[...] values are left as YAML made them
        optional = typing.get_origin(hint) is typing.Union
        base = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
        target = base[0] if len(base) == 1 else None
        if target in (int, float) and not isinstance(value, bool):
            try:
                out[key] = target(value)
            except (TypeError, ValueError):
                raise ValueError(f"config {key} must be a {target.__name__}, got {value!r}") from None
        elif target is bool and not isinstance(value, bool):
            raise ValueError(f"config {key} must be true or false, got {value!r}")
        elif target is str and not isinstance(value, str):
            out[key] = str(value)
    return out
