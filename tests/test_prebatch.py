import pytest
import torch

from kgc_kd.models.prebatch import PreBatchBuffer


def test_fifo_overwrites_oldest_batch():
    buf = PreBatchBuffer(num_batches=2, batch_size=2, dim=3)
    assert not buf.filled.any()
    for k in range(3):
        buf.push(torch.full((2, 3), float(k)), torch.full((2, 3), k, dtype=torch.long))
    # slots: batch 2 overwrote batch 0; batch 1 still there
    assert buf.vectors[:2].eq(2.0).all() and buf.vectors[2:].eq(1.0).all()
    assert buf.triples[:2].eq(2).all() and buf.filled.all()


def test_pushed_vectors_are_detached():
    buf = PreBatchBuffer(1, 2, 3)
    v = torch.randn(2, 3, requires_grad=True)
    buf.push(v * 2, torch.zeros(2, 3, dtype=torch.long))
    assert not buf.vectors.requires_grad


def test_batch_size_must_be_constant():
    buf = PreBatchBuffer(1, 4, 3)
    with pytest.raises(ValueError, match="constant batch size 4"):
        buf.push(torch.randn(3, 3), torch.zeros(3, 3, dtype=torch.long))
