"""Device, precision and thread settings shared by training, evaluation and search."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ivt.config import PRECISIONS
from ivt.errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise DeviceError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise DeviceError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto``: bf16 on CPU (about 4x faster matmuls on current
    CPUs), bf16 on CUDA where supported, else fp16."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}': use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise DeviceError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``tensor`` on ``device``; CPU -> CUDA goes through pinned memory without blocking, so the
    host does not wait for the GPU queue to drain (a pageable copy would)."""
    if device is None or torch.device(device) == tensor.device:
        return tensor
    if tensor.device.type == "cpu" and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def training_attention(device: torch.device) -> ContextManager:
    """Attention backends for training: on CUDA, everything but cuDNN's.

    BMM changes the sequence length at every step, and cuDNN attention builds a new execution plan
    for every new shape (measured on an H200: about 1.8 ms of host time per call, which made the
    step host-bound); flash and memory-efficient attention need no per-shape plan.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: its default backends do not include cuDNN attention
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
