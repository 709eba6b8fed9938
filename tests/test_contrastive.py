import math

import torch

from kgc_kd.models.contrastive import MASK_VALUE, contrastive_logits, in_batch_accuracy, infonce_loss

HR = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TAIL = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
FN = torch.tensor([[False, False, False], [False, False, False], [True, False, False]])


def _ce(row, label):
    return -row[label] + math.log(sum(math.exp(v) for v in row))


def test_logits_3x3_by_hand():
    logits = contrastive_logits(HR, TAIL, torch.tensor(2.0), margin=0.1, fn_mask=FN)
    expected = torch.tensor([[1.8, 1.2, 0.0], [0.0, 1.4, 2.0], [MASK_VALUE, 2.0, 1.4]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_loss_3x3_by_hand():
    logits = contrastive_logits(HR, TAIL, torch.tensor(2.0), margin=0.1, fn_mask=FN)
    rows = [[1.8, 1.2, 0.0], [0.0, 1.4, 2.0], [-1e4, 2.0, 1.4]]
    cols = [[1.8, 0.0, -1e4], [1.2, 1.4, 2.0], [0.0, 2.0, 1.4]]
    expected = sum(_ce(r, i) for i, r in enumerate(rows)) / 3 + sum(_ce(c, i) for i, c in enumerate(cols)) / 3
    assert math.isclose(float(infonce_loss(logits)), expected, rel_tol=1e-5)


def test_identical_vectors_give_unit_diagonal_without_margin():
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    logits = contrastive_logits(v, v, torch.tensor(1.0), margin=0.0)
    assert torch.allclose(logits.diagonal(), torch.ones(4), atol=1e-6)


def test_prebatch_and_self_negative_columns():
    pb = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    pb_mask = torch.tensor([[False, True], [False, False], [False, False]])
    head = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    self_mask = torch.tensor([False, True, False])
    logits = contrastive_logits(HR, TAIL, torch.tensor(2.0), margin=0.0, head=head, self_mask=self_mask,
                                prebatch=pb, prebatch_mask=pb_mask, prebatch_weight=0.5)
    assert logits.shape == (3, 3 + 2 + 1)
    # pre-batch: cos * inv_t * weight, masked after scaling
    assert torch.allclose(logits[:, 3:5], torch.tensor([[0.0, MASK_VALUE], [1.0, 0.0], [0.8, 0.6]]), atol=1e-6)
    # self negative: hr_i . head_i * inv_t, masked where the head is a known answer
    assert torch.allclose(logits[:, 5], torch.tensor([0.0, MASK_VALUE, 1.2]), atol=1e-6)
    # the transposed CE only uses the in-batch block
    only_ib = contrastive_logits(HR, TAIL, torch.tensor(2.0), margin=0.0)
    ce_rows = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    ce_cols = torch.nn.functional.cross_entropy(only_ib.t(), torch.arange(3))
    assert torch.allclose(infonce_loss(logits), ce_rows + ce_cols)


def test_fp32_under_bf16_autocast():
    a = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = contrastive_logits(a.bfloat16(), a.bfloat16(), torch.tensor(20.0), margin=0.02)
    assert logits.dtype == torch.float32


def test_in_batch_accuracy():
    logits = torch.tensor([[2.0, 1.0], [3.0, 1.0]])
    assert float(in_batch_accuracy(logits)) == 0.5
