"""The training loop: data -> model -> epochs (lr and tau set per epoch, callbacks, checkpoint) -> log."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..convert import binary_layers
from ..nn import BinaryLayer, preset
from ..schedule import TauSchedule, create_schedule
from .checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import (DistInfo, all_reduce_sum, barrier, cleanup, file_seen_by_all, init_distributed,
                          resolve_device)
from .divergence import (EpochSteps, TrainingDiverged, first_nonfinite_step, grads_are_finite, max_abs_is_finite,
                         state_is_finite)
from .log import MetricsLog, Progress, read_metrics

# the wall clock of the time limit (a module attribute so that tests can drive it)
_clock = time.monotonic

# TrainConfig.amp -> the autocast dtype of the training step
_AMP_DTYPES: dict[str, Optional[torch.dtype]] = {"off": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["train", "Trainer", "TrainingDiverged", "lr_factor", "param_groups", "evaluate", "build_model"]


LR_SCHEDULES = ("cosine", "cosine_after_warmup", "constant")
WEIGHT_DECAY_RULES = ("all", "names", "conv_fc")


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, schedule: str = "cosine") -> float:
    """lr / base lr in epoch ``epoch`` (0-based) of ``epochs``; the lr is set once per epoch.

    Every schedule warms up as the authors' main.py does: (e + 1) / W in the W warm-up epochs.
    After it:

    - ``cosine`` (the authors' scripts): half a cosine whose first point is the LAST warm-up epoch,
      0.5 (1 + cos(pi (e - s) / (E - s))) with s = max(W - 1, 0). Their main.py steps
      ``CosineAnnealingLR(T_max=E - 4)`` after every epoch from epoch 4 on (W = 5); without warm-up
      (W = 0) it is the plain cosine over E epochs. It never reaches 0: the last epoch gets
      0.5 (1 + cos(pi (E - 1 - s) / (E - s))).
    - ``cosine_after_warmup`` (recu before issue 10; the runs in docs/ used it): the cosine starts
      after the warm-up, 0.5 (1 + cos(pi (e - W) / (E - W))), so epochs W - 1 and W both get the full lr.
    - ``constant``: 1.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup_epochs must lie in [0, epochs={epochs}), got {warmup_epochs}")
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    if schedule == "constant":
        return 1.0
    start = warmup_epochs if schedule == "cosine_after_warmup" else max(warmup_epochs - 1, 0)
    span = max(epochs - start, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / span))


def param_groups(model: nn.Module, weight_decay: float, on: str = "all",
                 names: Sequence[str] = ("conv", "fc")) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the decayed parameters with ``weight_decay``, the others with 0.

    Only trainable parameters (``requires_grad``) are listed. ``on`` picks the decayed ones:

    - ``all``: every parameter, in a single group (the authors' CIFAR script).
    - ``names``: every parameter whose name in ``model.named_parameters()`` contains one of ``names``
      as a substring (the authors' ImageNet and two-stage scripts, with ``("conv", "fc")``). On any
      model the rule is only about names, so it says exactly what it decays. On recu's ImageNet
      ResNets and two-stage ResNet-18 it decays what the authors' scripts decay on theirs: the stem
      convolution's weight, every binary convolution's weight and ``alpha``, the classifier's weight
      and bias; not BatchNorm, not the full-precision 1x1 shortcut convolutions (``downsample.N``),
      not the two-stage blocks' shifts (``move*``) and PReLU slopes.
    - ``conv_fc``: the ``weight`` of every Conv1d/Conv2d/Linear except full-precision (non-binary)
      1x1 Conv2d; no ``alpha``, no bias (recu before issue 10, kept as an option).

    Raises:
        ValueError: an unknown rule, bad ``names``, or (``names`` with ``weight_decay > 0``) no
            parameter name holding any of ``names`` - a rule that would silently decay nothing.
    """
    if on not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight decay rule must be one of {WEIGHT_DECAY_RULES}, got {on!r}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if on == "all":
        return [{"params": [p for _, p in trainable], "weight_decay": weight_decay}]
    if on == "names":
        if isinstance(names, str) or not names or not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"names must be a non-empty list of non-empty name substrings, got {names!r}")
        decay = [p for n, p in trainable if any(s in n for s in names)]
        if weight_decay > 0 and not decay:
            shown = [n for n, _ in trainable[:4]]
            raise ValueError(f"weight_decay_names {list(names)} match no trainable parameter of the model "
                             f"(its names look like {shown})")
    else:
        decay = []
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fp_1x1 = (isinstance(module, nn.Conv2d) and not isinstance(module, BinaryLayer)
                          and tuple(module.kernel_size) == (1, 1))
                if not fp_1x1 and module.weight.requires_grad:
                    decay.append(module.weight)
    ids = {id(p) for p in decay}
    rest = [p for _, p in trainable if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig, num_classes: int, in_channels: Optional[int] = None) -> nn.Module:
    """The config's model for ``num_classes`` classes; ``in_channels`` (the data's) is passed to a model
    that has that option unless ``model_kwargs`` sets it. A user's ``package.module:factory`` model is
    binarised as ``cfg.binarize`` says (its ``preset`` replaces ``cfg.preset``)."""
    from ..models import create
    from ..models.registry import takes_in_channels

    kwargs = dict(cfg.model_kwargs)
    user = ":" in cfg.model
    binary = preset(cfg.binarize.get("preset", cfg.preset) if user else cfg.preset, **cfg.binary)
    if user:
        kwargs["binarize"] = {k: v for k, v in cfg.binarize.items() if k != "preset"}
    if in_channels is not None and "in_channels" not in kwargs and takes_in_channels(cfg.model):
        kwargs["in_channels"] = in_channels
    return create(cfg.model, num_classes=num_classes, config=binary, **kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, channels_last: bool = False) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (%) over a whole loader (one host read at the end)."""
    was_training = model.training
    model.eval()
    try:
        totals, n = _eval_totals(model, loader, device, channels_last)
    finally:
        model.train(was_training)
    loss, top1, top5 = totals.tolist()
    n = max(n, 1)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


@torch.no_grad()
def _eval_totals(model: nn.Module, loader: Any, device: torch.device, channels_last: bool) -> tuple[Tensor, int]:
    """(summed loss, top-1 hits, top-5 hits) on the device, and the number of samples, counted on the host.

    Nothing in the loop waits for the device: the sample count comes from the batch shapes, not
    from a tensor built out of a Python number each step (a host-to-device copy on a GPU).
    """
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    n = 0
    for x, y in loader:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        totals += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
        n += y.numel()
    return totals, n


def _soft_cross_entropy(student: Tensor, teacher: Tensor) -> Tensor:
    return -(teacher.softmax(dim=1) * student.log_softmax(dim=1)).sum(dim=1).mean()


class Trainer:
    """One training run of a :class:`TrainConfig`. ``fit()`` trains and returns the summary."""

    def __init__(self, cfg: TrainConfig, callbacks: Optional[Sequence[Any]] = None, resume: bool = False,
                 stop_after: Optional[int] = None, time_limit: Optional[float] = None) -> None:
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        self.cfg = cfg
        self.resume = resume
        self.stop_after = stop_after
        self.time_limit = time_limit
        self.extra_callbacks = list(callbacks or [])

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: DistInfo = init_distributed(self.device)
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.dist.world_size} processes")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.run_dir = cfg.run_dir
        # before the data and the model: a wrong --resume fails at once
        resume_from = self._checkpoint_to_resume()

        from ..data import build_loaders

        self.data = build_loaders(
            cfg.dataset, cfg.data_dir, cfg.batch_size, cfg.eval_batch_size, self.device, cfg.seed,
            rank=self.dist.rank, world_size=self.dist.world_size, augment=cfg.augment,
            download=cfg.download, workers=cfg.workers, subset=cfg.subset, lighting=cfg.lighting,
            folder=cfg.folder_options() if cfg.dataset == "folder" else None,
        )
        if self.data.mean is not None and cfg.mean is None:
            # measured on the training images: the run's config.yaml and checkpoints keep them for recu eval
            cfg = self.cfg = dataclasses.replace(cfg, mean=list(self.data.mean), std=list(self.data.std))
        # the data's channel count for folder data and user models (registry specs elsewhere stay as they were)
        in_channels = self.data.input_size[0] if cfg.dataset == "folder" or ":" in cfg.model else None
        self.model = build_model(cfg, self.data.num_classes, in_channels).to(self.device)
        if cfg.init_from:
            load_model_state(self.model, load_checkpoint(cfg.init_from)["model"], f"init_from {cfg.init_from}")
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher = None
        if cfg.teacher:
            from .teacher import load_teacher  # a recu checkpoint or torchvision's ResNet-34 weights file

            self.teacher = load_teacher(cfg.teacher)
            self.teacher.to(self.device).eval().requires_grad_(False)

        self.has_binary = bool(binary_layers(self.model))
        self.tau: Optional[TauSchedule] = None
        if self.has_binary:
            self.tau = create_schedule(cfg.tau_schedule, tau_start=cfg.tau_start, tau_end=cfg.tau_end,
                                       epochs=cfg.epochs, switch_off=cfg.tau_switch_off)
        groups = param_groups(self.model, cfg.weight_decay, cfg.weight_decay_on, cfg.weight_decay_names)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=cfg.lr)

        self.callbacks = list(self.extra_callbacks)
        if cfg.monitor and self.has_binary and self.dist.is_main:
            try:
                from ..analysis.monitor import DeadWeightMonitor
            except ImportError:  # the analysis extra is optional
                DeadWeightMonitor = None  # type: ignore[assignment,misc]
            if DeadWeightMonitor is not None:
                self.callbacks.append(DeadWeightMonitor())

        self.amp_dtype: Optional[torch.dtype] = _AMP_DTYPES[cfg.amp]
        # float16 needs loss scaling (its range underflows small gradients); bfloat16 does not
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "float16" else None

        self.start_epoch = 0
        self.best_top1 = -1.0
        self.best_epoch = -1
        self.last_record: dict[str, Any] = {}
        # Resume on every process and before DDP wraps the model: DDP then starts from the resumed
        # weights everywhere (its construction broadcasts rank 0's), and the optimizer state belongs
        # to the parameters it will step.
        resumed = load_checkpoint(resume_from) if resume_from is not None else None
        if resumed is not None:
            self._load(resumed)

        self.net: nn.Module = self.model
        if self.dist.enabled:
            if cfg.sync_bn:
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.eval_net: nn.Module = self.model
        if cfg.compile:
            self.net = torch.compile(self.net)
            self.eval_net = torch.compile(self.model)

        self.log = MetricsLog(self.run_dir, cfg.tensorboard) if self.dist.is_main else None
        if resumed is not None and self.log is not None:
            # drop what the killed run logged after its checkpoint
            kept = [r for r in read_metrics(self.log.path) if r.get("epoch", -1) < int(resumed["epoch"])]
            self.log.rewrite(kept + [resumed["metrics"]])
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")

    def _load(self, state: dict[str, Any]) -> None:
        spec = getattr(self.model, "recu_spec", {})
        if state.get("model_spec", {}).get("name") != spec.get("name"):
            raise ValueError(f"cannot resume: the checkpoint holds {state.get('model_spec', {}).get('name')!r}, "
                             f"the config asks for {spec.get('name')!r}")
        load_model_state(self.model, state["model"], "checkpoint last.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.tau is not None and state.get("tau_schedule"):
            self.tau.load_state_dict(state["tau_schedule"])
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            cb.load_state_dict(cb_state)
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_top1 = float(state.get("best_top1", -1.0))
        self.best_epoch = int(state.get("best_epoch", -1))
        self.last_record = state["metrics"]
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    def _checkpoint_to_resume(self) -> Optional[Path]:
        """The run directory's ``last.pt`` when resuming, None for a fresh run; asked of every process.

        Raises ``ValueError`` for ``--resume`` without a run to resume and for a fresh run into a
        directory that holds one, ``RuntimeError`` when only some processes see the checkpoint.
        """
        last = self.run_dir / "last.pt"
        found = file_seen_by_all(last, self.dist, self.device)
        if found and not self.resume:
            raise ValueError(f"{self.run_dir} already holds a run (last.pt): pass --resume to continue it "
                             f"or choose another name/out_dir")
        if self.resume and not found:
            raise ValueError(f"--resume: there is no run to resume in {self.run_dir} (no last.pt); "
                             f"start it without --resume")
        return last if found else None

    def _state(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_spec": getattr(self.model, "recu_spec", {}),
            "optimizer": self.optimizer.state_dict(),
            "tau_schedule": self.tau.state_dict() if self.tau is not None else None,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "epoch": epoch,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "metrics": record,
            "recu_version": __version__,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            # folder data sets: the class folders in label order (recu eval, recu export)
            "class_names": self.data.class_names,
        }

    # -- the loop -----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch and return its record; raise :class:`TrainingDiverged` before anything is saved
        when it left a non-finite loss or state (or, with ``on_nonfinite: skip``, skipped every step)."""
        start = time.perf_counter()
        steps = self._run_steps(epoch)
        finite = torch.stack([steps.finite(), state_is_finite(self.model, self.optimizer, self.device)])
        totals = torch.cat([steps.sums, steps.sums.new_full((1,), float(steps.seen)), (~finite).double()])
        # the first host read of the epoch: it waits for the device, so the time below is the real one;
        # the flags are summed over the processes, so every one of them takes the same decision
        loss_sum, correct, n, bad_step, bad_state = all_reduce_sum(totals, self.dist).tolist()
        elapsed = time.perf_counter() - start
        if bad_step or bad_state or steps.all_skipped:
            raise self._diverged(epoch, steps, bool(bad_step))
        record = {"train_loss": loss_sum / max(n, 1), "train_top1": 100.0 * correct / max(n, 1),
                  "epoch_time_s": elapsed, "images_per_s": n / max(elapsed, 1e-9)}
        if self.cfg.on_nonfinite == "skip":
            record["skipped_steps"] = steps.skipped
        return record

    def _diverged(self, epoch: int, steps: EpochSteps, bad_step: bool) -> TrainingDiverged:
        """The exception for a diverged epoch, with the step to blame and what the checkpoints hold."""
        where = f"at epoch {epoch + 1}"
        step: Optional[int] = None
        if bad_step:
            index, loss = first_nonfinite_step(steps, self.dist)
            step = index + 1
            cause = f"{self._update_name()} though the loss is {loss:.4g}" if math.isfinite(loss) else f"loss is {loss}"
            what = f"{where}, step {step}/{steps.count}: {cause}"
        elif steps.all_skipped:
            what = f"{where}: the loss or gradients of all its {steps.count} steps were not finite, all skipped"
        else:  # every step finite, so its update (an overflow) or a buffer made the state non-finite
            step = steps.count
            what = f"{where}, step {step}/{steps.count}: the weights or optimizer state are not finite after it"
        lr = self.optimizer.param_groups[0]["lr"]
        # a fresh run's first epoch has no checkpoint; any later epoch follows one written at its start
        kept = epoch if epoch > 0 else None
        if kept is None:
            advice = "no epoch finished with finite weights, so no checkpoint was written; lower lr and start again"
        else:
            advice = (f"{self.run_dir / 'last.pt'} holds epoch {kept}, the last finite state; "
                      f"lower lr and continue with --resume")
        if self.cfg.on_nonfinite == "stop":
            advice += ", or --set on_nonfinite=skip"
        return TrainingDiverged(f"training diverged {what} (lr {lr:.4g}); {advice}", epoch + 1, step, kept)

    def _run_steps(self, epoch: int) -> EpochSteps:
        """Every step of ``epoch``: (summed loss, correct), each step's loss and update finiteness on the
        device, the samples seen and the steps skipped (host counts).

        Nothing here waits for the device (no ``.item()``, no tensor made from a Python number),
        so a GPU runs ahead of the host for the whole epoch; GradScaler's finite check with
        ``amp: float16`` and ``on_nonfinite: skip``'s (one read per step) are the exceptions.
        """
        cfg, loader = self.cfg, self.data.train
        loader.set_epoch(epoch)
        self.net.train()
        steps = len(loader)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        # per step: the epoch's one read finds a non-finite step, and which, without a read per step
        losses = torch.zeros(steps, dtype=torch.float32, device=self.device)
        update_finite = torch.ones(steps, dtype=torch.bool, device=self.device)
        seen = count = skipped = 0
        progress = Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}",
                            cfg.progress if self.dist.is_main else False, unit_scale=cfg.batch_size)
        for step, (x, y) in enumerate(loader):
            if self.tau is not None and cfg.tau_per_step:
                self.tau.apply(self.model, epoch, step, steps)
            taken = self._train_step(x, y, sums)
            count += 1
            if taken is None:
                skipped += 1
            else:
                losses[step], update_finite[step] = taken
                seen += y.numel()
            progress.update(y.numel() * self.dist.world_size)
        progress.close()
        return EpochSteps(sums, seen, losses, update_finite, count, skipped)

    def _autocast(self) -> ContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_step(self, x: Tensor, y: Tensor, sums: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """One optimiser step on the batch (x, y); adds its (summed loss, correct) to ``sums`` in place.

        Returns (loss, whether the update was finite: :meth:`_update_is_finite`) on the device, or None
        when ``on_nonfinite: skip`` skipped the step: one of them was not finite, and the weights,
        optimizer state and buffers stay as they were.
        """
        cfg = self.cfg
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        skip_mode = cfg.on_nonfinite == "skip"
        # the forward pass updates BatchNorm's running statistics: a skipped step puts them back
        buffers = [b.clone() for b in self.model.buffers()] if skip_mode else None
        with self._autocast():
            logits = self.net(x)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x)
                loss = _soft_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        update_ok = self._update_is_finite()
        if buffers is not None and not self._finite_everywhere(loss, update_ok):
            self._undo_step(buffers)
            return None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * y.numel(), (logits.argmax(dim=1) == y).sum().double()])
        return loss.detach(), update_ok

    def _update_is_finite(self) -> Tensor:
        """A device bool: the gradients are finite. With float16's GradScaler, which skips non-finite
        gradients itself (its scaled ones overflow by design while it looks for the scale), the
        buffers are checked instead: a non-finite forward pass leaves nan BatchNorm statistics."""
        if self.scaler is not None:
            return max_abs_is_finite(list(self.model.buffers()), self.device)
        return grads_are_finite(self.optimizer, self.device)

    def _update_name(self) -> str:
        """What :meth:`_update_is_finite` found not finite, for the message."""
        return "gradients are not finite" if self.scaler is None else "buffers (BatchNorm statistics) are not finite"

    def _finite_everywhere(self, loss: Tensor, update_ok: Tensor) -> bool:
        """Are the loss and the update finite on every process? One host read (``on_nonfinite: skip``)."""
        bad = (~(torch.isfinite(loss.detach()) & update_ok)).double().reshape(1)
        # summed over the processes: one whose loss alone is not finite makes them all skip
        return bool(all_reduce_sum(bad, self.dist).item() == 0)

    @torch.no_grad()
    def _undo_step(self, buffers: list[Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for b, saved in zip(self.model.buffers(), buffers):
            b.copy_(saved)

    def _out_of_time(self, job_start: float, epoch_start: float) -> bool:
        """Would one more epoch, as long as the one just finished (with its evaluation and checkpoint),
        end past the time limit? Every process takes the same decision (the slowest one's)."""
        if self.time_limit is None:
            return False
        now = _clock()
        # 10% margin: epochs vary by a few percent, and the first one of a job carries compilation
        over = (now - job_start) + 1.1 * (now - epoch_start) > self.time_limit
        flag = torch.tensor([float(over)], dtype=torch.float64, device=self.device)
        return bool(all_reduce_sum(flag, self.dist).item() > 0)

    def fit(self) -> dict[str, Any]:
        job_start = _clock()
        self._setup()
        cfg = self.cfg
        stopped_by_time = False
        try:
            if self.start_epoch == 0:
                for cb in self.callbacks:
                    cb.on_train_begin(self.model, self.run_dir, cfg.epochs)
            record: dict[str, Any] = self.last_record
            end = cfg.epochs if self.stop_after is None else min(cfg.epochs, self.stop_after)
            for epoch in range(self.start_epoch, end):
                epoch_start = _clock()
                lr = cfg.lr * lr_factor(epoch, cfg.epochs, cfg.warmup_epochs, cfg.lr_schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                tau = self.tau.apply(self.model, epoch) if self.tau is not None else None
                record = {"epoch": epoch, "lr": lr, "tau": tau}
                record.update(self._train_epoch(epoch))
                if self.tau is not None and cfg.tau_per_step:
                    record["tau"] = self.tau.last_tau
                last_epoch = epoch == cfg.epochs - 1
                if self.dist.is_main and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                    test = evaluate(self.eval_net, self.data.test, self.device, cfg.channels_last)
                    record.update({f"test_{k}": v for k, v in test.items()})
                    if test["top1"] > self.best_top1:
                        self.best_top1, self.best_epoch = test["top1"], epoch
                if self.dist.is_main:
                    monitor: dict[str, Any] = {}
                    started = time.perf_counter()
                    for cb in self.callbacks:
                        monitor.update(cb.on_epoch_end(self.model, epoch) or {})
                    if monitor:
                        record["monitor"] = monitor
                        # the monitor's cost, to compare with epoch_time_s
                        record["monitor_time_s"] = time.perf_counter() - started
                    state = self._state(epoch, record)
                    save_checkpoint(state, self.run_dir / "last.pt")
                    if self.best_epoch == epoch:
                        save_checkpoint(state, self.run_dir / "best.pt")
                    assert self.log is not None
                    self.log.write(record)
                    print(_epoch_line(record, cfg.epochs), flush=True)
                barrier(self.dist)
                if epoch + 1 < end and self._out_of_time(job_start, epoch_start):
                    stopped_by_time = True
                    if self.dist.is_main:
                        print(f"time limit: stopping after epoch {epoch + 1}/{cfg.epochs}, checkpoint in "
                              f"{self.run_dir / 'last.pt'}; continue with --resume", flush=True)
                    break
            return {"final_top1": record.get("test_top1"), "final_top5": record.get("test_top5"),
                    "best_top1": self.best_top1, "best_epoch": self.best_epoch, "run_dir": str(self.run_dir),
                    "epochs": cfg.epochs, "last_epoch": int(record.get("epoch", self.start_epoch - 1)) + 1,
                    "stopped_by_time_limit": stopped_by_time}
        finally:
            if self.log is not None:
                self.log.close()
            cleanup(self.dist)


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch'] + 1}/{epochs}", f"lr {r['lr']:.4g}"]
    if r.get("tau") is not None:
        parts.append(f"tau {r['tau']:.4f}")
    parts.append(f"train loss {r['train_loss']:.4f} top1 {r['train_top1']:.2f}%")
    if "test_top1" in r:
        parts.append(f"test top1 {r['test_top1']:.2f}% top5 {r['test_top5']:.2f}%")
    if r.get("skipped_steps"):
        parts.append(f"skipped {r['skipped_steps']} non-finite step{'s' if r['skipped_steps'] > 1 else ''}")
    parts.append(f"{r['images_per_s']:.0f} img/s, {r['epoch_time_s']:.1f}s")
    return " | ".join(parts)


def train(cfg: TrainConfig, callbacks: Optional[Sequence[Any]] = None, resume: bool = False,
          stop_after: Optional[int] = None, time_limit: Optional[float] = None) -> dict[str, Any]:
    """Train ``cfg`` and return ``final_top1``, ``best_top1``, ``best_epoch``, ``run_dir``, ``last_epoch``
    (epochs done so far) and ``stopped_by_time_limit``.

    ``resume`` continues the run in ``cfg.run_dir`` from its ``last.pt`` (a ``ValueError`` when there is
    none, rather than a fresh start). ``stop_after=N`` ends the
    job after epoch N; ``time_limit`` (seconds of wall clock from the call) ends it after the last
    epoch that fits, as estimated from the epoch before (a time-sliced job on a cluster). Either way
    the checkpoint of the last epoch is written and ``resume=True`` continues the run exactly.

    Raises:
        TrainingDiverged: a training loss or the weights stopped being finite (``cfg.on_nonfinite``
            ``stop``), or every step of an epoch was skipped (``skip``). That epoch is not saved:
            ``last.pt`` and ``best.pt`` hold the last finite epoch, and ``resume=True`` continues from it.
    """
    return Trainer(cfg, callbacks, resume, stop_after, time_limit).fit()
