"""Device and reduced-precision choice, shared by inference (engine, backends) and training."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device is not valid or (with require=True) not available."""


def resolve_device(requested: str, require: bool = False, cuda_index: int | None = None) -> torch.device:
    """'auto' -> CUDA if available else the CPU; a missing CUDA falls back to the CPU with a warning
    (or raises DeviceError with `require`). `cuda_index` picks the GPU for 'auto' (a training rank's LOCAL_RANK).
    """
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if cuda_index is None else torch.device("cuda", cuda_index)
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise DeviceError(f"device {requested!r} is not a valid torch device: {e}") from None
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
        if not ok:
            if require:
                raise DeviceError(f"device {requested!r} requested (require_device=true) but CUDA is not available")
            log.warning("device %r requested but CUDA is not available: falling back to the CPU", requested)
            return torch.device("cpu")
    elif dev.type != "cpu":
        raise DeviceError(f"device {requested!r} not supported (auto, cpu, cuda, cuda:N)")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision of `amp`: fp16 on CUDA, bf16 on the CPU (no fp16 kernels there)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def precision_of(amp: bool, device: torch.device) -> str:
    return ("fp16" if device.type == "cuda" else "bf16") if amp else "fp32"


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """torch.autocast in the `amp` precision of `device`, or a no-op when not enabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))
