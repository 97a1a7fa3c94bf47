"""Argument types and shared options of the `ivt` command: bad values are usage errors naming the
option and the value (exit status 2), never tracebacks."""
from __future__ import annotations

import argparse
from typing import Callable

from ivt.devices import PRECISIONS, check_device
from ivt.files import output_problem
from ivt.terminal import printable

FORMAT_HELP = "dataset format (default: auto-detect from the file name and contents)"


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer from ``low`` (up to ``high``); anything else is a usage error
    naming the option and the value (exit status 2)."""
    span = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got '{printable(text)}'")
        return value

    return parse


positive_int = int_in(1)
port_number = int_in(1, 65535)


def output_file(text: str) -> str:
    """argparse type of an option naming a file to write: refuses what
    :func:`ivt.files.output_problem` does (a directory, a path under a file, a folder where no
    file can be created), before any work is done."""
    problem = output_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(printable(problem))
    return text


def device_arg(text: str) -> str:
    """argparse type for --device: the grammar of :func:`ivt.devices.check_device`."""
    from ivt.errors import DeviceError

    try:
        return check_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


PRECISION_HELP = ("auto (default: bf16/fp16 AMP on CUDA; on CPU bf16 only where this CPU runs it natively and "
                  "measurably faster, else fp32), fp32, bf16 or fp16 (CUDA only)")


def add_device_precision(parser: argparse.ArgumentParser) -> None:
    """--device and --precision of every command that runs a model."""
    parser.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
