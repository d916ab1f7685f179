"""The one device chooser: precision defaults, loss scaling, one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrbench.engine.device import Device, batch_workers, device_name


def test_precision_defaults_and_errors() -> None:
    from cxrbench.errors import CxrbenchError

    cpu = Device.choose("cpu")
    assert (cpu.precision, cpu.amp, cpu.grad_scaler().is_enabled()) == ("fp32", False, False)
    half = Device.choose("cpu", precision="fp16")
    assert half.amp and half.grad_scaler().is_enabled()
    with half.autocast():
        assert nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.float16
    assert not Device.choose("cpu", precision="bf16").grad_scaler().is_enabled()  # bf16 needs no scaling
    with pytest.raises(CxrbenchError, match="must be one of fp32, bf16, fp16"):
        Device.choose("cpu", precision="fp8")


def test_device_name_and_batch_workers() -> None:
    assert device_name("cpu") == "cpu"
    assert device_name(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = Device.choose("cpu")
    assert batch_workers(None, cpu) == 0 and batch_workers(3, cpu) == 3
    from cxrbench.errors import CxrbenchError

    with pytest.raises(CxrbenchError, match="--num-workers -1"):
        batch_workers(-1, cpu)
