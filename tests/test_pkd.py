import math

import pytest
import torch

from kgc_kd.distill.pkd import pkd_loss


def _states(n_layers, seed, B=3, L=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, L, d, generator=g) for _ in range(n_layers + 1))


ATT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def _hand(student, teacher, att, layer_map):
    """Mean over real tokens, unit-normalise, squared differences averaged over batch and dimensions (PKD's
    element MSE), mean over pairs -- in loops."""
    def vec(h, b):
        n = int(att[b].sum())
        v = [sum(float(h[b, p, j]) for p in range(n)) / n for j in range(h.shape[-1])]
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    pairs = [(i + 1, layer_map[i] + 1) for i in range(len(layer_map) - 1)]
    total = 0.0
    for s, t in pairs:
        B, d = att.shape[0], student[s].shape[-1]
        per = [sum((a - c) ** 2 for a, c in zip(vec(student[s], b), vec(teacher[t], b))) for b in range(B)]
        total += sum(per) / (B * d)
    return total / len(pairs)


def test_identical_states_give_zero():
    st = _states(3, 0)
    assert float(pkd_loss(st, tuple(x.clone() for x in st), ATT, [0, 1, 2])) == 0.0


def test_equals_hand_computation():
    student, teacher = _states(3, 1), _states(6, 2)
    layer_map = [1, 3, 5]  # pairs (1, 2), (2, 4); the last student layer is left to the logits
    got = pkd_loss(student, teacher, ATT, layer_map)
    assert math.isclose(float(got), _hand(student, teacher, ATT, layer_map), rel_tol=1e-5)


def test_hand_numbers_element_mean_not_the_squared_distance():
    # one row, two real tokens, d = 2; a 2-layer student against a 2-layer teacher, map [0, 1]: one pair (1, 1)
    att = torch.tensor([[1, 1, 0]])
    emb = torch.zeros(1, 3, 2)
    student = (emb, torch.tensor([[[2.0, 0.0], [0.0, 0.0], [9.0, 9.0]]]), emb)  # mean [1, 0] -> [1, 0]
    teacher = (emb, torch.tensor([[[0.0, 3.0], [0.0, 1.0], [-9.0, 0.0]]]), emb)  # mean [0, 2] -> [0, 1]
    # (1 - 0)^2 + (0 - 1)^2 = 2 summed, / (B=1 * d=2) = 1.0 (the old per-row squared distance gave 2.0)
    assert float(pkd_loss(student, teacher, att, [0, 1])) == pytest.approx(1.0)


def test_cls_pooling_reads_the_first_token_only():
    att = torch.tensor([[1, 1]])
    emb = torch.zeros(1, 2, 2)
    student = (emb, torch.tensor([[[3.0, 4.0], [0.0, -50.0]]]), emb)  # [CLS] [3, 4] -> [0.6, 0.8]
    teacher = (emb, torch.tensor([[[1.0, 0.0], [7.0, 7.0]]]), emb)  # [CLS] [1, 0]
    # ((0.6 - 1)^2 + 0.8^2) / 2 = (0.16 + 0.64) / 2
    assert float(pkd_loss(student, teacher, att, [0, 1], pooling="cls")) == pytest.approx(0.4)
    assert float(pkd_loss(student, teacher, att, [0, 1], pooling="mean")) != pytest.approx(0.4)


def test_only_the_mapped_teacher_layers_matter():
    student, teacher = _states(3, 1), _states(6, 2)
    base = float(pkd_loss(student, teacher, ATT, [1, 3, 5]))
    t2 = list(teacher)
    for k in (0, 1, 3, 5, 6):  # not map[i] + 1 for i < 2 (2 and 4)
        t2[k] = t2[k] + 5.0 * torch.randn_like(t2[k])
    assert math.isclose(float(pkd_loss(student, tuple(t2), ATT, [1, 3, 5])), base, rel_tol=1e-6)
    t2[4] = t2[4] + torch.randn_like(t2[4])
    assert not math.isclose(float(pkd_loss(student, tuple(t2), ATT, [1, 3, 5])), base, rel_tol=1e-4)


def test_padding_does_not_matter():
    student, teacher = _states(2, 3), _states(4, 4)
    base = float(pkd_loss(student, teacher, ATT, [1, 3]))
    s2 = tuple(x.clone() for x in student)
    s2[1][2, 2:] = 100.0
    assert math.isclose(float(pkd_loss(s2, teacher, ATT, [1, 3])), base, rel_tol=1e-6)


def test_one_layer_student_gives_zero():
    student, teacher = _states(1, 5), _states(4, 6)
    out = pkd_loss(student, teacher, ATT, [3])
    assert out.dtype == torch.float32 and float(out) == 0.0


def test_width_mismatch_raises():
    with pytest.raises(ValueError):
        pkd_loss(_states(2, 0, d=4), _states(2, 1, d=6), ATT, [0, 1])
