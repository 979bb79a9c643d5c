"""Where and how training computes: the device, the precision (bf16 where the hardware has it) and,
opt-in, glibc's handling of freed memory. Nothing here runs at import; `keep_freed_memory` is the one
process-wide setting, and only the `ipae` command and the experiments' worker processes turn it on."""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch

__all__ = ["keep_freed_memory"]

# "fp32": everything in float32. "bf16": the layers' matmuls and activations in bfloat16 (autocast),
# the parameters, the optimiser, the rate term and the loss reduction in float32; faster only where the
# hardware has bfloat16 arithmetic (see `native_bf16`). "auto": bf16 where it is native, else fp32.
PRECISIONS = ("fp32", "bf16", "auto")


def resolve_device(device: str | torch.device | None = None, *, or_cpu: bool = False) -> torch.device:
    """`device` as a torch.device; None means CUDA when it is present, else the CPU. A name that is not a
    device is a ValueError; so is CUDA where it is not available, unless `or_cpu` (a model saved on a GPU
    machine, loaded on another): then the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a name such as 'cpu' or 'cuda:0', a torch.device or None, got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        if or_cpu:
            return torch.device("cpu")
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 matmuls are emulated, several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


@functools.cache
def _warn_emulated_bf16(device_type: str) -> None:  # once per process and device type
    warnings.warn(
        f"precision 'bf16' on a {device_type} without native bfloat16 (no AVX512-BF16 or AMX; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}): its matmuls are emulated and slower than fp32 (5x measured); "
        "use precision 'auto' or 'fp32'",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "fp32" or "bf16": "auto" is bf16 where `native_bf16(device)`, else fp32; "bf16" where it is not
    native warns (once) that it will be slower."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        _warn_emulated_bf16(device.type)
    return precision


@functools.cache
def keep_freed_memory() -> bool:
    """Opt-in, process-wide: ask glibc to keep freed blocks of up to 32 MiB in the heap instead of
    returning them to the OS.

    By default glibc unmaps a large block when it is freed, so every training step page-faults its
    activations back in (about 4000 faults a step for the toy model, a third of its time). Raising
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD stops that, at the price of a resident heap that does not
    shrink, for the whole process. `train` never calls it; the `ipae` command and the worker processes
    of `ipae.experiments` do. Done once; returns False where there is no glibc (then nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
