"""GPU readiness, tested on the CPU (issue 10, section 3).

- The training step and the evaluation loop never wait for the device: they run on the ``meta``
  device (the layers take their accelerator branch there, and any ``.item()``/``bool()`` fails)
  under a detector that also flags host<->device copies and tensors built from Python numbers.
- The dead-weight monitor calls no op that lacks a deterministic CUDA kernel, and its histogram
  gives torch.histc's counts.
- Resume happens before DDP wraps the model, and processes that disagree on the checkpoint stop.
- Mixed precision (bf16 autocast, float16 with a GradScaler) trains, with the latent weights in float32.
- The ImageNet loader keeps its workers across epochs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import recu
from recu.models import create
from recu.train import TrainConfig, load_checkpoint, train
from recu.train.distributed import DistInfo, file_seen_by_all
from recu.train.engine import Trainer, _eval_totals, param_groups

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=digits_cnn_1w1a", "dataset=digits", "batch_size=64", "eval_batch_size=500", "warmup_epochs=0",
        "device=cpu", "progress=false", "monitor=false"]

# ops that read a device value on the host (a synchronisation on a GPU)
_READS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "_unique2", "unique_consecutive",
          "unique_dim"}


class SyncDetector(TorchDispatchMode):
    """Records every host read of a device tensor, every copy between the CPU and the device, and
    every tensor made on the device from Python data (torch.tensor / as_tensor / new_tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self._patched: list[tuple[Any, str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _READS:
            self.events.append(f"host read: {func}")
        out = func(*args, **kwargs)
        if name in ("_to_copy", "copy_"):
            devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, Tensor)}
            if "cpu" in devices and len(devices) > 1:
                self.events.append(f"host<->device copy: {func}")
        return out

    def _wrap(self, owner: Any, attr: str, data_index: int) -> None:
        original = getattr(owner, attr)
        events = self.events

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            from_python = len(args) > data_index and not isinstance(args[data_index], Tensor)
            if from_python and isinstance(result, Tensor) and result.device.type != "cpu":
                events.append(f"tensor from Python data on {result.device}: {attr}")
            return result

        setattr(owner, attr, wrapped)
        self._patched.append((owner, attr, original))

    def __enter__(self) -> "SyncDetector":
        for owner, attr, data_index in ((torch, "tensor", 0), (torch, "as_tensor", 0), (Tensor, "new_tensor", 1)):
            self._wrap(owner, attr, data_index)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)


class MetaLoader:
    """Batches of digits-shaped data on the meta device (the loader interface of docs/interfaces.md)."""

    def __init__(self, steps: int, batch: int, channels: int = 1, size: int = 8) -> None:
        self.steps, self.batch, self.shape = steps, batch, (channels, size, size)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.steps):
            yield (torch.empty((self.batch, *self.shape), device="meta"),
                   torch.empty((self.batch,), dtype=torch.int64, device="meta"))


def _meta_trainer(teacher: bool = False, channels_last: bool = False) -> Trainer:
    """A Trainer whose step runs on the meta device, as _setup would build it on a GPU."""
    cfg = TrainConfig.from_yaml(None, TINY + ["tau_per_step=true", "label_smoothing=0.1", "epochs=3",
                                              f"channels_last={str(channels_last).lower()}"])
    t = Trainer(cfg)
    t.device = torch.device("meta")
    t.dist = DistInfo()
    t.model = t.net = create("digits_cnn_1w1a").to("meta")
    t.teacher = create("digits_cnn_fp").to("meta").eval().requires_grad_(False) if teacher else None
    t.optimizer = torch.optim.SGD(param_groups(t.model, 5e-4), lr=0.1, momentum=0.9)
    t.tau = recu.create_schedule("exponential", epochs=cfg.epochs)
    t.amp_dtype, t.scaler = None, None
    t.data = SimpleNamespace(train=MetaLoader(steps=3, batch=16))
    return t


def test_the_detector_catches_what_the_engine_used_to_do() -> None:
    """The detector is not blind: the pattern the engine had (a tensor from a Python number per step)
    and a host read are both reported."""
    y = torch.empty(16, device="meta")
    with SyncDetector() as d:
        torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)
    assert any("tensor from Python data" in e for e in d.events)
    with SyncDetector() as d, pytest.raises(RuntimeError):
        y.sum().item()
    assert any("host read" in e for e in d.events)
    x = torch.zeros(3)
    with SyncDetector() as d:
        x.to("meta")
    assert any("copy" in e for e in d.events)


@pytest.mark.parametrize("teacher,channels_last", [(False, False), (True, True)])
def test_training_steps_never_wait_for_the_device(teacher: bool, channels_last: bool) -> None:
    t = _meta_trainer(teacher, channels_last)
    with SyncDetector() as d:
        steps = t._run_steps(epoch=1)  # three steps, tau set before each
    assert d.events == []
    assert steps.seen == 3 * 16 and steps.sums.device.type == "meta" and steps.sums.shape == (2,)
    # each step's loss stays on the device for the epoch's one finiteness read
    assert steps.losses.device.type == "meta" and steps.losses.shape == (3,) and steps.count == 3
    assert t.tau.last_epoch == pytest.approx(1 + 2 / 3)  # the per-step schedule ran


def test_evaluation_loop_never_waits_for_the_device() -> None:
    model = create("digits_cnn_1w1a").to("meta")
    with SyncDetector() as d:
        totals, n = _eval_totals(model.eval(), MetaLoader(steps=4, batch=10), torch.device("meta"), True)
    assert d.events == [] and n == 40 and totals.shape == (3,)


def test_evaluate_counts_every_sample_on_the_host() -> None:
    """The host-side count gives the same numbers as counting on the device did (uneven last batch)."""
    from recu.train import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    res = evaluate(model, [(x[:7], y[:7]), (x[7:], y[7:])], torch.device("cpu"))
    with torch.no_grad():
        logits = model(x)
    assert res["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert res["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == y).double().mean()))
    assert res["top5"] == 100.0  # 3 classes: always within the top "5"


# ---------------------------------------------------------------- deterministic monitor

# ops that raise under torch.use_deterministic_algorithms(True) on CUDA (torch's documentation)
_NO_DETERMINISTIC_CUDA_KERNEL = {"histc", "kthvalue", "put_", "put", "nll_loss2d_forward", "grid_sampler_2d_backward",
                                 "reflection_pad1d_backward", "reflection_pad2d_backward", "reflection_pad3d_backward",
                                 "adaptive_max_pool2d_backward", "_adaptive_avg_pool2d_backward",
                                 "_adaptive_avg_pool3d_backward", "avg_pool3d_backward", "fractional_max_pool2d_backward",
                                 "fractional_max_pool3d_backward", "max_unpool2d", "max_unpool3d",
                                 "upsample_bilinear2d_backward", "upsample_linear1d_backward",
                                 "upsample_bicubic2d_backward", "upsample_trilinear3d_backward", "_ctc_loss_backward"}


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        self.calls.append((func.overloadpacket.__name__, func, (args, kwargs)))
        return func(*args, **kwargs)


def _nondeterministic_on_cuda(calls: list[tuple[str, Any, Any]]) -> list[str]:
    bad = []
    for name, func, (args, kwargs) in calls:
        if name in _NO_DETERMINISTIC_CUDA_KERNEL:
            bad.append(str(func))
        elif name == "bincount" and (kwargs.get("weights") is not None or (len(args) > 1 and args[1] is not None)):
            bad.append(f"{func} with weights")
        elif name == "median" and "dim" in str(func):
            bad.append(f"{func} (indices output)")
        elif name == "cumsum" and args[0].is_floating_point():
            bad.append(f"{func} on floats")
        elif name == "scatter_reduce" and (args[3:4] == ("prod",) or kwargs.get("reduce") == "prod"):
            bad.append(f"{func} prod")
    return bad


def test_dead_weight_monitor_uses_only_ops_with_deterministic_cuda_kernels(tmp_path: Path) -> None:
    from recu.analysis.monitor import DeadWeightMonitor

    torch.manual_seed(0)
    model = create("digits_cnn_1w1a")
    mon = DeadWeightMonitor(buckets=5, since_epochs=[0])
    with OpRecorder() as rec:
        mon.on_train_begin(model, tmp_path, epochs=2)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))  # make weights flip
        out = mon.on_epoch_end(model, 0)
    names = {n for n, _, _ in rec.calls}
    assert "histc" not in names and "bincount" not in names
    assert _nondeterministic_on_cuda(rec.calls) == []
    assert out["dead_weight"]["total"]["flips"] > 0  # it measured something
    # and the checker itself is not blind to the ops it looks for
    with OpRecorder() as rec:
        torch.histc(torch.randn(10), bins=4)
        torch.bincount(torch.tensor([0, 1]), weights=torch.tensor([0.5, 1.0]))
    assert len(_nondeterministic_on_cuda(rec.calls)) == 2


def test_monitor_runs_with_deterministic_algorithms_on(tmp_path: Path) -> None:
    from recu.analysis.monitor import DeadWeightMonitor

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = create("digits_cnn_1w1a")
        mon = DeadWeightMonitor(buckets=4)
        mon.on_train_begin(model, tmp_path, epochs=1)
        assert mon.on_epoch_end(model, 0)["dead_weight"]["total"]["flips"] == 0
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("name,size", [("resnet20_1w1a", 32), ("resnet18_1w1a_imagenet", 64),
                                       ("reactnet_resnet18", 64), ("vgg_small_1w1a", 32)])
def test_a_training_step_of_the_paper_models_has_deterministic_cuda_kernels(name: str, size: int) -> None:
    """deterministic: true on CUDA: no op of a training step (forward, loss, backward, SGD) would raise.
    (The global average pools are AdaptiveAvgPool2d(1), which torch runs as a mean.)"""
    torch.manual_seed(0)
    model = create(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    with OpRecorder() as rec:
        nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        opt.step()
    assert _nondeterministic_on_cuda(rec.calls) == []
    assert len(rec.calls) > 100  # it recorded the step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_histogram_counts_equal_histc(dtype: torch.dtype) -> None:
    from recu.analysis.stats import histogram_counts

    g = torch.Generator().manual_seed(1)
    for bins, lo, hi in [(200, -8.0, 8.0), (7, -1.3, 2.9), (1, 0.0, 1.0), (256, -0.5, 0.25)]:
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        x = torch.cat([torch.randn(20000, generator=g, dtype=torch.float64) * (hi - lo),  # much outside too
                       edges, edges + 1e-12, edges - 1e-12,  # the bin edges and their neighbours
                       torch.tensor([lo, hi, hi, float("nan"), float("inf"), -float("inf")], dtype=torch.float64)])
        x = x.to(dtype)
        expected = torch.histc(x, bins=bins, min=lo, max=hi).to(torch.float64)
        got = histogram_counts(x, bins, lo, hi)
        assert torch.equal(got, expected), (bins, lo, hi)
    with pytest.raises(ValueError, match="lo < hi"):
        histogram_counts(torch.zeros(3), 4, 1.0, 1.0)


def test_bucket_flip_counts_equal_the_weighted_bincount() -> None:
    from recu.analysis.stats import index_counts

    g = torch.Generator().manual_seed(2)
    bucket = torch.randint(0, 6, (1000,), generator=g, dtype=torch.uint8).long()
    flipped = torch.rand(1000, generator=g) < 0.3
    old = torch.bincount(bucket, weights=flipped.double(), minlength=6)
    new = index_counts(bucket + 6 * flipped.long(), 12)[6:]
    assert torch.equal(new.double(), old) and torch.equal(index_counts(bucket, 6), torch.bincount(bucket, minlength=6))


# ---------------------------------------------------------------- resume and DDP

def test_resume_loads_before_ddp_wraps_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = lambda: TrainConfig.from_yaml(None, TINY + [f"out_dir={tmp_path}", "name=r", "epochs=2"])  # noqa: E731
    train(cfg(), stop_after=1)
    seen: dict[str, Any] = {}
    original = Trainer._load

    def spy(self: Trainer, state: dict) -> None:
        seen["net_built"] = hasattr(self, "net")  # the (DDP-)wrapped model is built after the load
        seen["epoch"] = state["epoch"]
        original(self, state)

    monkeypatch.setattr(Trainer, "_load", spy)
    done = train(cfg(), resume=True)
    assert seen == {"net_built": False, "epoch": 0} and done["last_epoch"] == 2


def test_resume_without_a_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--resume: there is no run to resume in .*no last.pt"):
        train(TrainConfig.from_yaml(None, TINY + [f"out_dir={tmp_path}", "name=none", "epochs=1"]), resume=True)
    assert not (tmp_path / "none" / "last.pt").exists()


def _agreement_worker(rank: int, init_file: str, paths: list[str], results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        found = file_seen_by_all(Path(paths[rank]), DistInfo(rank, 2, rank), torch.device("cpu"))
        outcome = f"found={found}"
    except RuntimeError as e:
        outcome = f"error: {e}"
    finally:
        dist.destroy_process_group()
    Path(results, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("case", ["both", "neither", "only_rank0"])
def test_processes_that_disagree_on_the_checkpoint_stop(tmp_path: Path, case: str) -> None:
    """Two gloo processes: both or neither seeing last.pt is fine; one alone is an error on both."""
    import torch.multiprocessing as mp

    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x")
    missing = tmp_path / "elsewhere" / "last.pt"
    paths = {"both": [ckpt, ckpt], "neither": [missing, missing], "only_rank0": [ckpt, missing]}[case]
    mp.spawn(_agreement_worker, args=(str(tmp_path / "init"), [str(p) for p in paths], str(tmp_path)), nprocs=2)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if case == "both":
        assert outcomes == ["found=True", "found=True"]
    elif case == "neither":
        assert outcomes == ["found=False", "found=False"]
    else:
        assert all(o.startswith("error: ") and "seen by 1 of 2 processes" in o for o in outcomes)
        assert "rank 0, sees it" in outcomes[0] and "rank 1, does not see it" in outcomes[1]


# ---------------------------------------------------------------- mixed precision

def test_amp_config_values() -> None:
    for value, expected in [("false", "off"), ("off", "off"), ("bfloat16", "bfloat16"), ("float16", "float16")]:
        assert TrainConfig.from_yaml(None, [f"amp={value}"]).amp == expected
    assert TrainConfig().amp == "off"
    with pytest.raises(ValueError, match=r"config amp must be one of \('off', 'bfloat16', 'float16'\)"):
        TrainConfig.from_yaml(None, ["amp=fp8"])


def _record_latent_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.dtype]]:
    from recu.nn import BinaryLayer

    seen: list[tuple[str, torch.dtype]] = []
    for name in ("standardized_weight", "quantile", "clamped_weight"):
        original = getattr(BinaryLayer, name)

        def spy(self, *args, _original=original, _name=name):  # type: ignore[no-untyped-def]
            out = _original(self, *args)
            seen.append((_name, out.dtype))
            return out

        monkeypatch.setattr(BinaryLayer, name, spy)
    return seen


def test_bf16_autocast_step_keeps_the_latent_weight_path_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig.from_yaml(None, TINY + ["amp=bfloat16"])
    t = Trainer(cfg)
    t.device, t.dist, t.teacher, t.scaler = torch.device("cpu"), DistInfo(), None, None
    t.amp_dtype = torch.bfloat16
    t.model = t.net = create("digits_cnn_1w1a")
    t.optimizer = torch.optim.SGD(param_groups(t.model, 5e-4), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    seen = _record_latent_dtypes(monkeypatch)
    convs: list[tuple[torch.dtype, ...]] = []

    class ConvDtypes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.overloadpacket.__name__ == "convolution":
                convs.append((args[0].dtype, args[1].dtype))
            return func(*args, **(kwargs or {}))

    sums = torch.zeros(2, dtype=torch.float64)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    with ConvDtypes():
        t._train_step(x, y, sums)
    assert {n for n, _ in seen} == {"standardized_weight", "quantile", "clamped_weight"}
    assert all(d == torch.float32 for _, d in seen)  # W1, Q and W2 in float32 under autocast
    assert convs and all(d == (torch.bfloat16, torch.bfloat16) for d in convs)  # the convolutions ran in bf16
    after = t.model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # parameters stay float32
    assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("weight"))  # it stepped
    assert torch.isfinite(sums).all() and sums[0] > 0


def test_float16_amp_trains_and_resumes_with_its_grad_scaler(tmp_path: Path) -> None:
    cfg = lambda: TrainConfig.from_yaml(None, TINY + [f"out_dir={tmp_path}", "name=fp16", "epochs=2", "amp=float16"])  # noqa: E731
    first = train(cfg(), stop_after=1)
    state = load_checkpoint(tmp_path / "fp16" / "last.pt")
    assert state["grad_scaler"] is not None and state["grad_scaler"]["scale"] > 0
    assert first["last_epoch"] == 1
    done = train(cfg(), resume=True)
    assert done["last_epoch"] == 2 and done["final_top1"] > 20  # it learns (chance: 10%)


# ---------------------------------------------------------------- ImageNet loader workers

def test_imagenet_loader_keeps_its_workers_across_epochs(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    from recu.data.imagenet import ImageFolderDataset, ImageFolderLoader, scan_class_folders

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    samples, _ = scan_class_folders(tmp_path)
    ds = ImageFolderDataset(samples, train=True, size=16)
    reference = ImageFolderLoader(ds, 4, "cpu", seed=3, workers=0)
    assert reference.loader.persistent_workers is False  # no workers to keep
    loader = ImageFolderLoader(ds, 4, "cpu", seed=3, workers=2)
    assert loader.loader.persistent_workers is True
    iterators = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        got, want = list(loader), list(reference)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
        iterators.append(loader.loader._iterator)  # private, but the only handle on the worker processes
    assert iterators[0] is iterators[1] and iterators[0] is not None  # the same workers served epoch 2
    epoch0 = [y for _, y in (reference.set_epoch(0) or list(reference))]
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, [y for _, y in got]))  # set_epoch still reached them


# ---------------------------------------------------------------- torch floor and the GPU smoke script

def test_torch_floor_matches_the_newest_api_used() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', text)
    assert floor and (int(floor.group(1)), int(floor.group(2))) == (2, 3)
    # the APIs that set it (new in 2.3) are the ones recu calls
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "recu").rglob("*.py"))
    assert "torch.compiler.is_compiling()" in sources and "torch.amp.GradScaler(" in sources


def test_gpu_smoke_script_runs_on_the_cpu(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "gpu_smoke.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RECU_CIFAR10_DIR", None)  # generated CIFAR-shaped data
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--cifar-steps", "2", "--cifar-batch", "8",
                          "--imagenet-steps", "2", "--imagenet-batch", "2", "--imagenet-size", "64",
                          "--out-dir", str(tmp_path), "--no-ddp"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if "images/s" in line]
    assert any(line.startswith("resnet20_1w1a cifar10 (generated)") for line in lines), out.stdout
    assert any(line.startswith("resnet18_1w1a_imagenet") for line in lines), out.stdout
    assert all(float(re.search(r"([\d.]+) images/s", line).group(1)) > 0 for line in lines)
