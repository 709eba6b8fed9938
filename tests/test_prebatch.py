import pytest
import torch

from kgc_kd.models.prebatch import PreBatchBuffer


def test_fifo_overwrites_oldest_batch():
    buf = PreBatchBuffer(num_batches=2)
    assert buf.empty and len(buf) == 0
    for k in range(3):
        buf.push(torch.full((2, 3), float(k)), torch.full((2, 3), k, dtype=torch.long))
        assert buf.filled.sum() == min(k + 1, 2) * 2
    # slots: batch 2 overwrote batch 0; batch 1 still there
    assert buf.vectors[:2].eq(2.0).all() and buf.vectors[2:].eq(1.0).all()
    assert buf.triples[:2].eq(2).all() and buf.filled.all() and len(buf) == 4


def test_first_push_sizes_the_buffer_on_the_vectors_device():
    buf = PreBatchBuffer(3)
    buf.push(torch.randn(5, 7, dtype=torch.bfloat16), torch.zeros(5, 3, dtype=torch.long))
    assert buf.vectors.shape == (15, 7) and buf.vectors.dtype == torch.float32  # kept in fp32
    assert buf.triples.shape == (15, 3) and buf.filled.tolist() == [True] * 5 + [False] * 10
    assert buf.batch_size == 5 and buf.vectors.device == torch.device("cpu")
    assert "vectors" not in buf.state_dict()  # not checkpointed


def test_pushed_vectors_are_detached():
    buf = PreBatchBuffer(1)
    v = torch.randn(2, 3, requires_grad=True)
    buf.push(v * 2, torch.zeros(2, 3, dtype=torch.long))
    assert not buf.vectors.requires_grad


def test_batch_size_must_be_constant():
    buf = PreBatchBuffer(1)
    buf.push(torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="constant batch size 4"):
        buf.push(torch.randn(3, 3), torch.zeros(3, 3, dtype=torch.long))


def test_at_least_one_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        PreBatchBuffer(0)
