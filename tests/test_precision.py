"""kgc_kd.runtime.precision: an unset trainer.precision follows the device; an explicit one always wins.

There is no GPU on CI, so the CUDA device's capabilities are set with monkeypatch on torch.cuda's two queries
(`is_available`, `is_bf16_supported`): exactly what the code asks a real device.
"""

import pytest
import torch

from kgc_kd.chain.driver import trainer_kwargs
from kgc_kd.config import load_config
from kgc_kd.runtime.precision import configure_matmul, resolve_precision, uses_cuda


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA device with (True) or without (False) bf16 support."""

    def make(bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return make


@pytest.fixture
def restore_matmul():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_unset_precision_on_a_bf16_gpu_is_bf16_mixed(cuda):
    cuda(bf16=True)
    assert resolve_precision(None, "auto") == ("bf16-mixed", "trainer.precision unset: CUDA device with bf16 support")
    assert resolve_precision(None, "gpu")[0] == "bf16-mixed"
    assert resolve_precision(None, "cuda")[0] == "bf16-mixed"


def test_unset_precision_on_a_gpu_without_bf16_stays_fp32(cuda):
    cuda(bf16=False)
    assert resolve_precision(None, "auto") == (
        "32-true", "trainer.precision unset: CUDA device without bf16 support (TF32 matmuls)")


def test_unset_precision_on_cpu_is_fp32(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(None, "auto") == ("32-true", "trainer.precision unset: no CUDA device")
    cuda(bf16=True)  # a GPU is visible, but the run is told to use the CPU
    assert resolve_precision(None, "cpu") == ("32-true", "trainer.precision unset: no CUDA device")
    assert not uses_cuda("cpu") and uses_cuda("auto")


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed"])
def test_an_explicit_precision_always_wins(cuda, explicit):
    cuda(bf16=True)
    assert resolve_precision(explicit, "auto") == (explicit, "set by trainer.precision")


def test_trainer_kwargs_carry_the_resolved_precision(cuda):
    cuda(bf16=True)
    assert trainer_kwargs(load_config([]))["precision"] == "bf16-mixed"  # the embedded default on a bf16 GPU
    assert trainer_kwargs(load_config(["trainer.precision=32-true"]))["precision"] == "32-true"
    assert trainer_kwargs(load_config(["trainer.accelerator=cpu"]))["precision"] == "32-true"


def test_the_default_config_leaves_precision_to_the_device():
    assert load_config([]).trainer.precision is None
    assert load_config(["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"


def test_tf32_matmuls_on_cuda_only(monkeypatch, cuda, restore_matmul):
    torch.set_float32_matmul_precision("highest")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert configure_matmul("auto") is None
    assert torch.get_float32_matmul_precision() == "highest"
    cuda(bf16=True)
    assert configure_matmul("cpu") is None and torch.get_float32_matmul_precision() == "highest"
    assert configure_matmul("auto") == "high"
    assert torch.get_float32_matmul_precision() == "high"
