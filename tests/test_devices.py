"""kgc_kd.runtime.devices on the CPU (its CUDA branches run in tests/test_gpu.py)."""

import torch

from kgc_kd.runtime.devices import canonical, synchronize


def test_canonical_names_are_the_tensor_names():
    assert canonical("cpu") == torch.device("cpu") == torch.empty(0).device
    assert canonical(torch.device("meta")) == torch.empty(0, device="meta").device


def test_synchronize_on_the_cpu_returns_at_once():
    synchronize("cpu")
    synchronize(torch.device("meta"))
