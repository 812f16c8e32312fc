"""One line naming the machine and versions a benchmark ran on (printed by every benchmark)."""

from __future__ import annotations

import platform

import torch


def machine_line() -> str:
    return (
        f"{platform.node()} | {platform.processor() or platform.machine()} | {torch.get_num_threads()} threads | "
        f"python {platform.python_version()} | torch {torch.__version__}"
        + (f" | {torch.cuda.get_device_name()}" if torch.cuda.is_available() else " | cpu")
    )
