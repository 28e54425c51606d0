"""What a user watches: a JSON-lines metrics log (TensorBoard optional) and a progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["MetricsLog", "read_metrics", "Progress"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Append one JSON object per epoch to ``run_dir/metrics.jsonl`` (and TensorBoard scalars)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(f"tensorboard=true needs the tensorboard package ({e})") from None
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log by ``records`` atomically (a resumed run drops what followed its checkpoint)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(_jsonable(r)) + "\n")
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self._tb is not None:
            step = int(record.get("epoch", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A progress bar over batches with images/s and ETA (tqdm when installed, plain lines otherwise)."""

    def __init__(self, total: int, desc: str, enabled: Optional[bool] = None, unit_scale: int = 1) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.desc, self.unit_scale = total, desc, unit_scale
        self._bar = None
        self._start = time.perf_counter()
        self._done = 0
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total * unit_scale, desc=desc, unit="img", unit_scale=True,
                                 leave=False, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, images: int, **postfix: float) -> None:
        self._done += images
        if self._bar is not None:
            self._bar.update(images)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.enabled:
            elapsed = time.perf_counter() - self._start
            rate = self._done / max(elapsed, 1e-9)
            left = self.total * self.unit_scale - self._done
            print(f"\r{self.desc}: {self._done}/{self.total * self.unit_scale} img, {rate:.0f} img/s, "
                  f"ETA {left / max(rate, 1e-9):.0f}s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)
