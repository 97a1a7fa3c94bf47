"""The names a user gives for where and how to compute: the device grammar and the precisions.

Torch-free, so the configuration and the command line can check a name without importing torch;
whether this machine has the device, and which precision ``auto`` becomes, is
:mod:`ivt.runtime`'s question.
"""
from __future__ import annotations

import re

from ivt.errors import DeviceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(name: object) -> str:
    """``name`` if it is a device name (auto, cpu, cuda or cuda:N), else a :class:`DeviceError`.

    The one statement of the device grammar: the config, the command line and the runtime use it.
    """
    if isinstance(name, str) and _DEVICE.fullmatch(name):
        return name
    raise DeviceError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N")
