"""Which kernel path this machine runs: CPU features (as LLVM sees them), the path choice, AMX permission.

Imports no kernel and, until a function is called, not even numba or llvmlite: the runtime answers
"which path" on a machine without numba (``numpy``).

Kernel paths (argument ``impl`` or the environment variable ``RECU_DEPLOY_KERNEL``): ``auto`` (default:
the first of ``amx`` > ``avx512`` > ``avx2`` > ``portable`` > ``numpy`` this machine runs), or one of
them by name, refused where the CPU lacks what it needs so a benchmark never silently measures the wrong
thing. See :mod:`recu.deploy.runtime.kernels` for what each path is.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from typing import Optional

__all__ = [
    "KERNELS",
    "ENV_VAR",
    "AMX_MIN_CHANNELS",
    "numba_available",
    "host_features",
    "has_vpopcntdq",
    "has_avx2",
    "has_amx",
    "request_amx",
    "target_has_avx512f",
    "target_has_avx2",
    "resolve_kernel",
    "layer_kernel",
]

KERNELS = ("auto", "amx", "avx512", "avx2", "portable", "numpy")
ENV_VAR = "RECU_DEPLOY_KERNEL"



@functools.lru_cache(maxsize=None)
def numba_available() -> bool:
    """True when numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def host_features() -> dict:
    """The host CPU's features as LLVM (numba's llvmlite) reports them; empty without numba."""
    if not numba_available():
        return {}
    import llvmlite.binding as llvm

    try:
        return dict(llvm.get_host_cpu_features())
    except RuntimeError:
        return {}


def has_vpopcntdq() -> bool:
    """True when LLVM reports AVX-512 VPOPCNTDQ on this CPU."""
    return bool(host_features().get("avx512vpopcntdq", False))


def has_avx2() -> bool:
    """True when LLVM reports AVX2 on this CPU."""
    return bool(host_features().get("avx2", False))


@functools.lru_cache(maxsize=None)
def target_has_avx512f() -> bool:
    """Whether numba compiles for a CPU with AVX-512F: its target features, which ``NUMBA_CPU_FEATURES``
    may make differ from the host's (as for the AVX2 benchmark on an AVX-512 machine)."""
    if not numba_available():
        return False
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    try:
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    except RuntimeError:
        return False
    return "+avx512f" in features.split(",")


def has_amx() -> bool:
    """True when the CPU has AMX-INT8 (as LLVM reports it) and Linux grants this process the tile state.

    The first call asks the kernel for the state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), once per process.
    """
    features = host_features()
    return bool(features.get("amx-int8", False) and features.get("amx-tile", False)) and request_amx()


_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86_64


@functools.lru_cache(maxsize=None)
def request_amx() -> bool:
    """Ask Linux for AMX tile state for this process; True when granted (x86_64 Linux only)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def resolve_kernel(impl: Optional[str] = None) -> str:
    """The concrete kernel path (``amx``, ``avx512``, ``avx2``, ``portable`` or ``numpy``) for ``impl``.

    ``impl`` None reads ``RECU_DEPLOY_KERNEL`` (default ``auto``: amx > avx512 > avx2 > portable >
    numpy, the first this machine runs). The CPU checks are on the host CPU, whatever target
    ``NUMBA_CPU_NAME`` makes numba compile for.
    """
    choice = (impl if impl is not None else os.environ.get(ENV_VAR, "auto")).strip().lower()
    if choice not in KERNELS:
        source = "impl" if impl is not None else ENV_VAR
        raise ValueError(f"{source} must be one of {KERNELS}, got {choice!r}")
    if choice == "auto":
        if not numba_available():
            return "numpy"
        if has_amx():
            return "amx"
        if has_vpopcntdq():
            return "avx512"
        return "avx2" if has_avx2() else "portable"
    if choice in ("amx", "avx512", "avx2", "portable") and not numba_available():
        raise RuntimeError(f"kernel {choice!r} needs numba; install recu-bnn[deploy] or use 'numpy'")
    if choice == "avx512" and not has_vpopcntdq():
        raise RuntimeError("kernel 'avx512' needs a CPU with AVX-512 VPOPCNTDQ; use 'portable' or 'auto'")
    if choice == "avx2" and not has_avx2():
        raise RuntimeError("kernel 'avx2' needs a CPU with AVX2; use 'portable' or 'auto'")
    if choice == "amx" and not has_amx():
        raise RuntimeError("kernel 'amx' needs a CPU with AMX-INT8 and a Linux kernel that grants the tile "
                           "state (5.16 or later); use 'avx512', 'portable' or 'auto'")
    return choice


# Below one full 64-channel group the amx path multiplies mostly zero padding: measured on layers of
# 16-48 input channels the popcount kernel was 1.0-1.8x faster, from 64 channels on amx 1.3-2.2x.
AMX_MIN_CHANNELS = 64


def layer_kernel(impl: Optional[str], in_channels: int) -> str:
    """The path for one layer with ``in_channels`` inputs: :func:`resolve_kernel`, except that an
    ``auto`` choice of ``amx`` goes to ``avx512`` below :data:`AMX_MIN_CHANNELS` input channels
    (when the CPU has VPOPCNTDQ). An explicit choice is always kept."""
    kind = resolve_kernel(impl)
    if kind == "amx" and in_channels < AMX_MIN_CHANNELS and has_vpopcntdq():
        choice = impl if impl is not None else os.environ.get(ENV_VAR, "auto")
        if choice.strip().lower() == "auto":
            return "avx512"
    return kind



# A 256-bit integer add: one ymm vpaddd exactly when the target has AVX2 (AVX alone splits it).
_AVX2_PROBE_IR = """
define <8 x i32> @probe(<8 x i32> %a, <8 x i32> %b) {
  %c = add <8 x i32> %a, %b
  ret <8 x i32> %c
}
"""


@functools.lru_cache(maxsize=None)
def target_has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: its target, which ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` may make differ from the host.

    Decides whether the avx2 kernel widens its byte counts with the x86 ``vpsadbw`` intrinsic
    (which LLVM cannot compile for another target: it would abort the process, and numba compiles
    every function a caller may reach, taken branch or not) or with portable shifts and adds.
    Answered by LLVM itself, from numba's CPU name and features, on a one-line probe.
    """
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    try:
        target = ll.Target.from_default_triple()
        machine = target.create_target_machine(cpu=cpu, features=features, opt=1)
        module = ll.parse_assembly(_AVX2_PROBE_IR)
        module.triple = machine.triple
        asm = machine.emit_assembly(module)
    except RuntimeError:
        return False
    return any("vpaddd" in line and "ymm" in line for line in asm.splitlines())
