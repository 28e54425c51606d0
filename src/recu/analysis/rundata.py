"""Read what a training run left behind: metrics.jsonl, weights/ snapshots, config.yaml, checkpoints.

Checkpoints and snapshots are read with ``torch.load(..., weights_only=True)`` only: no code
from a file ever runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .. import functional as RF
from .monitor import MONITOR_KIND

__all__ = ["RunData", "load_run", "find_monitor", "load_checkpoint_weights", "standardize_like_layer"]

PathLike = Union[str, Path]
_SNAPSHOT = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass
class RunData:
    """One run directory. ``monitor`` holds the DeadWeightMonitor record of each epoch that has one."""

    run_dir: Path
    records: list[dict[str, Any]]
    monitor: list[dict[str, Any]]
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> snapshot
    config_text: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)


def find_monitor(record: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The DeadWeightMonitor result inside one metrics record, wherever the engine nested it.

    The engine stores the merged callback results under ``monitor``; the monitor's own
    result carries ``kind == "recu.dead_weight"``, at most two levels down.
    """
    def search(obj: Any, depth: int) -> Optional[dict[str, Any]]:
        if not isinstance(obj, dict):
            return None
        if obj.get("kind") == MONITOR_KIND and "layers" in obj:
            return obj
        if depth == 0:
            return None
        for value in obj.values():
            found = search(value, depth - 1)
            if found is not None:
                return found
        return None

    return search(record.get("monitor"), 2)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
    return records


def _load_snapshots(weights_dir: Path) -> dict[str, dict[str, Any]]:
    """stage -> snapshot; for a stage saved twice the latest file wins."""
    found: list[tuple[int, Path]] = []
    if weights_dir.is_dir():
        for p in weights_dir.iterdir():
            m = _SNAPSHOT.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    stages: dict[str, dict[str, Any]] = {}
    for done, path in sorted(found):
        try:
            snap = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - the unpickler raises many types for a corrupt file
            from ..train.checkpoint import error_line

            raise ValueError(f"{path} cannot be read as a weights snapshot: {error_line(e)}") from None
        if not isinstance(snap, dict) or not isinstance(snap.get("weights"), dict):
            raise ValueError(f"{path} is not a DeadWeightMonitor snapshot (no 'weights' dict)")
        snap.setdefault("epoch", done - 1)
        snap["file"] = path.name
        for stage in snap.get("stages", ["extra"]):
            stages[stage] = snap
    return stages


def load_run(run_dir: PathLike) -> RunData:
    """Read a run directory; ``ValueError`` if it has neither metrics.jsonl nor snapshots."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    records = _read_jsonl(metrics) if metrics.is_file() else []
    snapshots = _load_snapshots(run_dir / "weights")
    if not records and not snapshots:
        raise ValueError(f"{run_dir} holds no metrics.jsonl and no weights/epoch_XXXX.pt snapshots: not a run directory")
    monitor = []
    for r in records:
        m = find_monitor(r)
        if m is not None:
            monitor.append(m)
    config_text, config = None, {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        config_text = cfg_path.read_text()
        try:
            import yaml

            loaded = yaml.safe_load(config_text)
            config = loaded if isinstance(loaded, dict) else {}
        except ImportError:  # pyyaml is optional: the report then shows the raw text only
            pass
        except yaml.YAMLError as e:
            raise ValueError(f"{cfg_path} is not valid YAML: {e}") from None
    return RunData(run_dir, records, monitor, snapshots, config_text, config)


def standardize_like_layer(w: Tensor, config: dict[str, Any]) -> Tensor:
    """W1 from a stored latent weight, following a BinaryConfig given as a dict (steps 1-2)."""
    w = w.to(torch.float32)
    if config.get("center", True):
        w = RF.center_filters(w)
    if config.get("standardize", True):
        w = RF.standardize_filters(w, float(config.get("b_star", 2.0)), float(config.get("eps", 1e-5)))
    return w


def load_checkpoint_weights(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Optional[float]], dict[str, Any]]:
    """Binary layers of a checkpoint: ({name: W1}, {name: tau}, the checkpoint dict).

    A binary layer is a ``NAME.weight`` whose module also stores ``NAME.alpha`` or ``NAME.tau``.
    The checkpoint is a dict with a ``model`` state_dict (a bare state_dict also works); its
    ``model_spec["config"]`` (or ``model_spec["kwargs"]["config"]``), when present, says how to standardise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises many types for foreign or corrupt files
        from ..train.checkpoint import error_line  # torch's messages run to many lines

        raise ValueError(f"{path} cannot be read as a weights-only torch checkpoint: {error_line(e)}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'model' is not a state_dict")
    spec = ckpt.get("model_spec") or {}
    # recu_spec keeps the BinaryConfig dict at the top level; older specs kept it inside kwargs
    config = dict(spec.get("config") or (spec.get("kwargs") or {}).get("config") or {})
    weights: dict[str, Tensor] = {}
    taus: dict[str, Optional[float]] = {}
    for key, value in state.items():
        if not key.endswith(".weight") or not isinstance(value, Tensor) or value.dim() < 2:
            continue
        prefix = key[: -len(".weight")]
        if f"{prefix}.alpha" not in state and f"{prefix}.tau" not in state:
            continue
        weights[prefix] = standardize_like_layer(value, config)
        tau = state.get(f"{prefix}.tau")
        taus[prefix] = float(tau) if isinstance(tau, Tensor) else None
    if not weights:
        raise ValueError(f"{path} holds no binary layers (no NAME.weight with NAME.alpha or NAME.tau)")
    return weights, taus, ckpt
