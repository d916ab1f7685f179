"""The one device chooser: CUDA when it is there, else the CPU; bf16 autocast by default on GPU.

Importing this module does not import torch, so code that only asks "is there a GPU?" (the
statistics engine) stays light when there is no NVIDIA driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxrbench.errors import CxrbenchError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def cuda_available() -> bool:
    """True when a CUDA device can be used; without an NVIDIA driver, torch is not even imported."""
    if "torch" not in sys.modules and not (os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi")):
        return False
    import torch

    return torch.cuda.is_available()


def device_name(name: str | None = None) -> str:
    """``name`` if given, else ``cuda`` when available, else ``cpu``."""
    return str(name) if name else ("cuda" if cuda_available() else "cpu")


@dataclass(frozen=True)
class Device:
    """Where to train and in which precision: ``bf16`` autocast by default on GPU, ``fp32`` on CPU,
    ``fp16`` autocast with loss scaling for GPUs without fast bf16 (V100, T4)."""

    device: torch.device
    precision: str = "fp32"

    @classmethod
    def choose(cls, name: str | None = None, *, precision: str | None = None) -> Device:
        import torch

        device = torch.device(device_name(name))
        precision = precision or ("bf16" if device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise CxrbenchError(f"--precision {precision!r}: must be one of {', '.join(PRECISIONS)}")
        return cls(device, precision)

    @property
    def amp(self) -> bool:
        return self.precision != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.amp:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(device_type=self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def grad_scaler(self) -> Any:
        """Loss scaling against fp16 gradient underflow; a pass-through (disabled) for bf16 and fp32."""
        import torch

        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on this device; channels-last on CUDA, where convolutions run fastest in NHWC."""
        import torch

        module.to(self.device)
        if self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        return module


def batch_workers(num_workers: int | None, device: Device) -> int:
    """Processes that read batches from the cache: ``num_workers`` (validated), else 4 on CUDA and
    0 on CPU, where the main process keeps up and worker start-up would cost more than it saves."""
    if num_workers is None:
        return 4 if device.device.type == "cuda" else 0
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise CxrbenchError(f"--num-workers {num_workers!r}: must be an integer >= 0")
    return num_workers
