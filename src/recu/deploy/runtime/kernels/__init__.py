"""The deployment kernels, one module per kernel family, in one direction (after Larq Compute Engine's ``core/``).

Kernel paths (argument ``impl`` or the environment variable ``RECU_DEPLOY_KERNEL``; :mod:`.cpu` chooses):

- ``auto`` (default): ``amx`` when numba is installed, the CPU has AMX-INT8 and Linux grants the
  process the tile state; else ``avx512`` when the CPU has AVX-512 VPOPCNTDQ; else ``avx2`` when it
  has AVX2; else ``portable`` when numba is installed; else ``numpy``. Per layer
  (:func:`~.cpu.layer_kernel`), ``auto`` keeps layers with fewer than 64 input channels on ``avx512``,
  which is faster there.
- ``amx`` (:mod:`.amx`): the signs as int8 +-1 on Intel AMX tiles: 16,384 multiply-accumulates per
  ``tdpbssd``, three times the popcount kernel's ceiling on this kind of core. The padding is
  materialised as int8 zeros, which add 0 exactly as in training. The file keeps 1 bit per weight; at
  run time small layers hold int8 weights (8x the packed size), large ones keep 1 bit per weight and
  expand each tile in the kernel.
- ``avx512`` (:mod:`.popcount_avx512`): 4 output pixels x 16 output channels in 512-bit registers;
  LLVM emits ``vpopcntq zmm`` on a CPU with AVX-512 VPOPCNTDQ (checked by
  :func:`~.asm.fast_kernel_asm_has_vpopcntq`). Correct on any CPU (LLVM lowers ``ctpop`` to what the CPU
  has), but selecting it explicitly on a CPU without VPOPCNTDQ is refused so a benchmark never silently
  measures the wrong thing. Narrow layers of a plan pack their kernel rows' taps together (:mod:`.taps`).
- ``avx2`` (:mod:`.popcount_avx2`): the same structure in 256-bit registers (4 pixels x 8 channels),
  popcount by nibble lookup (``vpshufb``) and one ``vpsadbw`` per 31 words, for x86 CPUs with AVX2 and
  without AVX-512. Compiled for an AVX2 target on any machine with ``NUMBA_CPU_NAME=haswell
  NUMBA_CPU_FEATURES=`` (both: the CPU name alone keeps the host's features, AVX-512 included).
- ``portable`` (:mod:`.popcount_portable`): compiled, one output channel at a time, SWAR popcount.
- ``numpy`` (:mod:`.reference`): the reference (no numba needed; slow).

All paths return the same integers, and through the float32 epilogue the same floats.

Layers, each importing only those above it in this list (no import circle, not even in a function):

1. :mod:`.cpu` (which path; no numba at import), :mod:`.reference` (NumPy), :mod:`.jit` (how every kernel
   is compiled, the shared float32 arithmetic), :mod:`.cache` (numba's cache kept fresh),
   :mod:`.threads` (the worker pool);
2. the kernel families: :mod:`.packing`, :mod:`.popcount_avx512`, :mod:`.popcount_portable`,
   :mod:`.popcount_avx2`, :mod:`.float_ops`, :mod:`.amx`, :mod:`.taps`;
3. :mod:`.plan_exec` (the compiled whole-network executor), :mod:`.weights` (packed weights and their
   per-path layouts), :mod:`.conv` (the per-layer driver), :mod:`.asm` (assembly for inspection).

A new kernel family goes in layer 2 (its own file, built on :mod:`.jit`), its dispatch in
:mod:`.conv` and :mod:`.plan_exec`, its path name in :mod:`.cpu`.

Importing this package imports nothing; the names below are imported from their module on first use.
"""

from __future__ import annotations

from ...._lazy import attach

_NAMES = {
    **dict.fromkeys(("KERNELS", "ENV_VAR", "AMX_MIN_CHANNELS", "numba_available", "host_features", "has_vpopcntdq",
                     "has_avx2", "has_amx", "request_amx", "target_has_avx512f", "target_has_avx2",
                     "resolve_kernel", "layer_kernel"), ".cpu"),
    **dict.fromkeys(("output_size", "binary_conv2d_numpy", "epilogue_table", "epilogue_numpy"), ".reference"),
    "PackedConvWeights": ".weights",
    **dict.fromkeys(("binary_conv2d", "binary_conv2d_float", "pack_activations"), ".conv"),
    "set_num_threads": ".threads",
    **dict.fromkeys(("fast_kernel_asm", "amx_kernel_asm", "avx2_kernel_asm", "fast_kernel_asm_has_vpopcntq"), ".asm"),
}
__all__ = list(_NAMES)

__getattr__, __dir__ = attach(__name__, _NAMES)
