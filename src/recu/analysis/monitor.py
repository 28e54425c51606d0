"""``DeadWeightMonitor``: per-layer weight statistics after every epoch (a training callback).

It answers the questions the paper leaves open (method document, section 7): do the
binary weights still flip, and which ones (bucketed by the magnitude |W1| / sigma they
had at the previous epoch: do large "dead" weights ever flip?); how many weights never
flip after epoch k; how many sit beyond +-Q; is the latent distribution Laplace or
Gaussian; how much information the binary filters carry.

Flips are counted between consecutive epoch ends: a weight that flips and flips back
within one epoch is not seen.

Implements the Callback contract of ``docs/interfaces.md``. Everything runs in
vectorised torch on the model's device under ``torch.no_grad``; the numbers of all
layers are read back to the host in one transfer per epoch. Every op has a deterministic
CUDA kernel, so the monitor runs with ``deterministic: true`` (no histc, no weighted bincount).

``on_epoch_end`` returns ``{"dead_weight": R}`` (one key, because the engine merges the
dicts of all callbacks), R being::

    {"kind": "recu.dead_weight", "version": 1, "epoch": e, "start_epoch": -1, "buckets": B,
     "layers": {name: {
         "numel", "tau", "b_hat" (mean |W1|), "q" (Q; mean over filters for a per-channel b_hat;
         None for tau = 1), "flips", "flip_ratio" (since the previous epoch end),
         "never_flipped": {"start": share, "<k>": share or None before epoch k ends},
         "clamped_share" (|W1| > Q at the layer's tau, also for clamp="none": what ReCU would clamp),
         "clamped_share_laplace" (2 (1 - tau)),
         "bucket_edges" (B + 1 values of |W1|/sigma of the previous epoch bounding the buckets),
         "bucket_flips" (B ints), "bucket_flip_ratio" (B floats),
         "kurtosis", "tail_mass_3sigma", "ks_laplace", "ks_gaussian", "loglik_laplace",
         "loglik_gaussian", "binary_entropy_bits", "latent_entropy"}},
     "total": {"numel", "flips", "flip_ratio", "never_flipped": {...}, "clamped_share",
               "bucket_flip_ratio"}}

Snapshots: ``run_dir/weights/epoch_XXXX.pt`` with XXXX the number of finished epochs
(0000 = initial weights), each ``{"epoch": index or -1, "stages": ["init" | "middle" |
"end" | "extra"], "weights": {name: W1 float32}, "tau": {name: float}}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import functional as RF
from ..convert import binary_layers
from ..nn import BinaryLayer
from . import stats as S

__all__ = ["DeadWeightMonitor", "MONITOR_KIND", "RESULT_KEY", "snapshot_path", "forward_signs"]

MONITOR_KIND = "recu.dead_weight"
# The engine merges the dicts of all callbacks into one "monitor" record: one namespaced key avoids clashes.
RESULT_KEY = "dead_weight"
_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def snapshot_path(run_dir: Union[str, Path], epochs_done: int) -> Path:
    """``run_dir/weights/epoch_XXXX.pt``, XXXX = epochs finished (0000 = the initial weights)."""
    return Path(run_dir) / "weights" / f"epoch_{epochs_done:04d}.pt"


def forward_signs(layer: BinaryLayer, w1: Tensor, q: Tensor) -> Tensor:
    """The forward pass's binary weights as booleans (True = +1): sign(W2) with sign(0) = +1.

    sign(clamp(W1)) = sign(W1) = sign(W - mean_c W) except where Q = 0; computing it from
    the clamped value keeps even that corner identical to the forward pass.
    """
    w2 = w1 if layer.config.clamp in ("none", "mask") else RF.recu_clamp(w1, q)
    return w2 >= 0


def _clean_name(name: str) -> str:
    # DDP and torch.compile wrap the model; the statistics belong to the bare model's layers.
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    layers = [(_clean_name(n), m) for n, m in binary_layers(model)]
    if not layers:
        raise ValueError("DeadWeightMonitor: the model has no ReCU binary layers to monitor")
    return layers


def _json_float(x: float) -> Optional[float]:
    # JSON has no inf/nan; None says "no finite value" (e.g. Q at tau = 1).
    return x if x == x and abs(x) != float("inf") else None


class _Readback:
    """Collects device tensors and reads them all back to the host in one transfer."""

    def __init__(self) -> None:
        self._parts: list[Tensor] = []
        self._slices: list[tuple[int, int]] = []
        self._size = 0

    def add(self, t: Tensor) -> int:
        flat = t.detach().reshape(-1).to(torch.float64)
        self._parts.append(flat)
        self._slices.append((self._size, self._size + flat.numel()))
        self._size += flat.numel()
        return len(self._parts) - 1

    def read(self) -> list[list[float]]:
        if not self._parts:
            return []
        values = torch.cat([p.to(self._parts[0].device) for p in self._parts]).cpu().tolist()
        return [values[a:b] for a, b in self._slices]


class DeadWeightMonitor:
    """Per-binary-layer statistics after every epoch, stored under ``monitor`` in metrics.jsonl.

    Args:
        buckets: number of equal-count buckets of |W1| / sigma (previous epoch) for the flips.
        since_epochs: extra epochs k for "share never flipped after epoch k" (besides the
            epoch the monitoring started). The reference are the signs at the end of epoch k.
        snapshots: write ``run_dir/weights/epoch_XXXX.pt`` at init, middle and end.
        snapshot_epochs: extra epoch indices to snapshot.
        ks_max_samples: layers larger than this are subsampled (fixed stride) for the KS test.

    Epochs are the engine's 0-based indices: the middle snapshot is taken at the end of
    epoch ``epochs // 2``, the end snapshot at the end of epoch ``epochs - 1``.
    """

    def __init__(
        self,
        buckets: int = 10,
        since_epochs: Sequence[int] = (),
        snapshots: bool = True,
        snapshot_epochs: Sequence[int] = (),
        ks_max_samples: int = 1 << 20,
    ) -> None:
        if not 1 <= buckets <= 255:
            raise ValueError(f"buckets must be between 1 and 255, got {buckets}")
        if any(int(k) < 0 for k in since_epochs):
            raise ValueError(f"since_epochs must be epoch indices >= 0, got {list(since_epochs)}")
        self.buckets = int(buckets)
        self.since_epochs = sorted({int(k) for k in since_epochs})
        self.snapshots = snapshots
        self.snapshot_epochs = sorted({int(k) for k in snapshot_epochs})
        self.ks_max_samples = int(ks_max_samples)
        self.run_dir: Optional[Path] = None
        self.epochs: Optional[int] = None
        self.start_epoch: Optional[int] = None  # -1: monitoring began before epoch 0
        self.last_epoch: Optional[int] = None
        # name -> {"sign": bool, "bucket": uint8, "stable": {key: bool}}
        self._state: dict[str, dict[str, Any]] = {}
        self._pending_init: Optional[dict[str, Any]] = None

    # -- Callback contract ---------------------------------------------------------------------

    @torch.no_grad()
    def on_train_begin(self, model: nn.Module, run_dir: Optional[Union[str, Path]], epochs: int) -> None:
        """Record where to write snapshots; take the reference signs unless a state was loaded.

        The initial snapshot is written at the first :meth:`on_epoch_end`, so that a
        :meth:`load_state_dict` that follows (a resumed run) cancels it instead of
        overwriting the real initial weights with the resumed ones.
        """
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.epochs = int(epochs)
        if self._state:
            return  # resumed: load_state_dict came first
        self.start_epoch = -1
        self.last_epoch = None
        init: dict[str, Tensor] = {}
        taus: dict[str, float] = {}
        for name, layer in _layers(model):
            w1 = layer.standardized_weight()
            self._state[name] = self._fresh_layer_state(layer, w1)
            init[name] = w1.detach().float().cpu().clone()
            taus[name] = float(layer.tau)
        self._pending_init = {"weights": init, "tau": taus}

    @torch.no_grad()
    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict:
        """Statistics of every binary layer at the end of ``epoch``: ``{"dead_weight": {...}}`` (JSON-serialisable)."""
        if not self._state:
            raise RuntimeError("DeadWeightMonitor.on_epoch_end called before on_train_begin or load_state_dict")
        epoch = int(epoch)
        layers = _layers(model)
        names = [n for n, _ in layers]
        if set(names) != set(self._state):
            raise ValueError(
                "DeadWeightMonitor: the model's binary layers differ from the monitored ones; "
                f"new {sorted(set(names) - set(self._state))}, missing {sorted(set(self._state) - set(names))}"
            )
        self._write_pending_init()
        for k in self.since_epochs:
            if k == epoch:
                for st in self._state.values():
                    st["stable"][str(k)] = None  # activated below from this epoch's signs

        rb = _Readback()
        slots: list[dict[str, int]] = []
        snapshot: dict[str, Tensor] = {}
        taus: dict[str, float] = {}
        for name, layer in layers:
            st = self._state[name]
            w1 = layer.standardized_weight()
            q = layer.quantile(w1)
            sign = forward_signs(layer, w1, q)
            prev_sign = st["sign"].to(sign.device)
            prev_bucket = st["bucket"].to(sign.device).long()
            flipped = sign != prev_sign
            slot = {
                "tau": rb.add(layer.tau),
                "b_hat": rb.add(w1.abs().mean()),
                "q": rb.add(q.mean()),
                "flips": rb.add(flipped.sum()),
                "clamped": rb.add((w1.abs() > q).sum()),
                # flipped weights of bucket b counted in slot buckets + b (bincount with weights has no
                # deterministic CUDA kernel; index_counts neither syncs nor depends on the order of adds)
                "bucket_flips": rb.add(S.index_counts(prev_bucket + self.buckets * flipped.long(),
                                                      2 * self.buckets)[self.buckets:]),
                "bucket_sizes": rb.add(S.index_counts(prev_bucket, self.buckets)),
                "bucket_edges": rb.add(st["edges"].to(sign.device)),
                "entropy_bits": rb.add(S.binary_entropy_bits(sign)),
            }
            for key, value in S.distribution_summary(w1, self.ks_max_samples).items():
                slot[key] = rb.add(value)
            stable = {}
            for key, mask in st["stable"].items():
                if mask is None:  # reference epoch reached now: nothing flipped since
                    mask = torch.ones_like(sign)
                else:
                    mask = mask.to(sign.device) & ~flipped
                st["stable"][key] = mask
                stable[key] = rb.add(mask.sum())
            slot["stable"] = stable  # type: ignore[assignment]
            slots.append(slot)
            # The new reference: this epoch's signs and magnitude buckets.
            st["sign"] = sign
            st["bucket"], st["edges"] = S.magnitude_buckets(w1.abs() / S.filter_std(w1), self.buckets)
            if self._snapshot_due(epoch):
                snapshot[name] = w1.detach().float().cpu().clone()
                taus[name] = float(layer.tau)

        values = rb.read()
        self.last_epoch = epoch
        if snapshot:
            self._save_snapshot(epoch, {"weights": snapshot, "tau": taus})
        return self._assemble(epoch, layers, slots, values)

    def state_dict(self) -> dict:
        """Everything needed to continue the statistics exactly (tensors on the CPU)."""
        layers = {
            name: {
                "sign": st["sign"].cpu(),
                "bucket": st["bucket"].cpu(),
                "edges": st["edges"].cpu(),
                "stable": {k: (v.cpu() if v is not None else None) for k, v in st["stable"].items()},
            }
            for name, st in self._state.items()
        }
        return {
            "kind": MONITOR_KIND,
            "version": _VERSION,
            "buckets": self.buckets,
            "since_epochs": list(self.since_epochs),
            "start_epoch": self.start_epoch,
            "last_epoch": self.last_epoch,
            # A resumed run may not call on_train_begin again: keep where and until when to snapshot.
            "epochs": self.epochs,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "layers": layers,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; cancels a pending initial snapshot (a resumed run)."""
        if state.get("kind") != MONITOR_KIND or state.get("version") != _VERSION:
            raise ValueError(
                f"not a DeadWeightMonitor state (kind {state.get('kind')!r}, version {state.get('version')!r}; "
                f"expected {MONITOR_KIND!r}, {_VERSION})"
            )
        if int(state["buckets"]) != self.buckets:
            raise ValueError(
                f"the saved monitor used {state['buckets']} buckets, this one {self.buckets}; "
                "construct the monitor with the same buckets to resume"
            )
        self.since_epochs = sorted(set(self.since_epochs) | {int(k) for k in state["since_epochs"]})
        self.start_epoch = state["start_epoch"]
        self.last_epoch = state["last_epoch"]
        if self.epochs is None and state.get("epochs") is not None:
            self.epochs = int(state["epochs"])
        if self.run_dir is None and state.get("run_dir") is not None:
            self.run_dir = Path(state["run_dir"])
        self._state = {
            name: {
                "sign": st["sign"].clone(),
                "bucket": st["bucket"].clone(),
                "edges": st["edges"].clone(),
                "stable": {k: (v.clone() if v is not None else None) for k, v in st["stable"].items()},
            }
            for name, st in state["layers"].items()
        }
        self._pending_init = None

    # -- internals -----------------------------------------------------------------------------

    def _fresh_layer_state(self, layer: BinaryLayer, w1: Tensor) -> dict[str, Any]:
        bucket, edges = S.magnitude_buckets(w1.abs() / S.filter_std(w1), self.buckets)
        return {
            "sign": forward_signs(layer, w1, layer.quantile(w1)),
            "bucket": bucket,
            "edges": edges,
            "stable": {"start": torch.ones(w1.shape, dtype=torch.bool, device=w1.device)},
        }

    def _snapshot_due(self, epoch: int) -> bool:
        if not self.snapshots or self.run_dir is None:
            return False
        return epoch in self.snapshot_epochs or (
            self.epochs is not None and epoch in (self.epochs // 2, self.epochs - 1)
        )

    def _stages(self, epoch: int) -> list[str]:
        stages = []
        if self.epochs is not None and epoch == self.epochs // 2:
            stages.append("middle")
        if self.epochs is not None and epoch == self.epochs - 1:
            stages.append("end")
        return stages or ["extra"]

    def _write_pending_init(self) -> None:
        pending, self._pending_init = self._pending_init, None
        if pending is not None and self.snapshots and self.run_dir is not None:
            self._write(snapshot_path(self.run_dir, 0), {"epoch": -1, "stages": ["init"], **pending})

    def _save_snapshot(self, epoch: int, content: dict[str, Any]) -> None:
        assert self.run_dir is not None
        self._write(snapshot_path(self.run_dir, epoch + 1), {"epoch": epoch, "stages": self._stages(epoch), **content})

    @staticmethod
    def _write(path: Path, obj: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, path)  # a crash never leaves a half-written snapshot

    def _assemble(
        self, epoch: int, layers: list[tuple[str, BinaryLayer]], slots: list[dict[str, Any]], values: list[list[float]]
    ) -> dict:
        keys = ["start"] + [str(k) for k in self.since_epochs]
        out_layers: dict[str, Any] = {}
        total_n = 0
        total = {"flips": 0.0, "clamped": 0.0, "bucket_flips": [0.0] * self.buckets,
                 "bucket_sizes": [0.0] * self.buckets, "stable": {k: 0.0 for k in keys}}
        for (name, layer), slot in zip(layers, slots):
            v = {k: values[i] for k, i in slot.items() if k != "stable"}
            stable = {k: values[i][0] for k, i in slot["stable"].items()}
            n = layer.weight.numel()
            total_n += n
            tau = v["tau"][0]
            bucket_sizes = v["bucket_sizes"]
            out_layers[name] = {
                "numel": n,
                "tau": tau,
                "b_hat": v["b_hat"][0],
                "q": _json_float(v["q"][0]),
                "flips": int(v["flips"][0]),
                "flip_ratio": v["flips"][0] / n,
                "never_flipped": {k: (stable[k] / n if k in stable else None) for k in keys},
                "clamped_share": v["clamped"][0] / n,
                "clamped_share_laplace": 2.0 * (1.0 - tau),
                "bucket_edges": v["bucket_edges"],
                "bucket_flips": [int(x) for x in v["bucket_flips"]],
                "bucket_flip_ratio": [f / s if s else None for f, s in zip(v["bucket_flips"], bucket_sizes)],
                "kurtosis": v["kurtosis"][0],
                "tail_mass_3sigma": v["tail_mass_3sigma"][0],
                "ks_laplace": v["ks_laplace"][0],
                "ks_gaussian": v["ks_gaussian"][0],
                "loglik_laplace": v["loglik_laplace"][0],
                "loglik_gaussian": v["loglik_gaussian"][0],
                "binary_entropy_bits": v["entropy_bits"][0],
                "latent_entropy": v["latent_entropy"][0],
            }
            total["flips"] += v["flips"][0]
            total["clamped"] += v["clamped"][0]
            for i in range(self.buckets):
                total["bucket_flips"][i] += v["bucket_flips"][i]
                total["bucket_sizes"][i] += bucket_sizes[i]
            for k in keys:
                total["stable"][k] = None if (k not in stable or total["stable"][k] is None) else total["stable"][k] + stable[k]
        return {RESULT_KEY: {
            "kind": MONITOR_KIND,
            "version": _VERSION,
            "epoch": epoch,
            "start_epoch": self.start_epoch,
            "buckets": self.buckets,
            "layers": out_layers,
            "total": {
                "numel": total_n,
                "flips": int(total["flips"]),
                "flip_ratio": total["flips"] / total_n,
                "never_flipped": {k: (s / total_n if s is not None else None) for k, s in total["stable"].items()},
                "clamped_share": total["clamped"] / total_n,
                "bucket_flip_ratio": [f / s if s else None for f, s in
                                      zip(total["bucket_flips"], total["bucket_sizes"])],
            },
        }}
