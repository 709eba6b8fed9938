import math

import pytest
import torch
from torch import nn

from kgc_kd.distill.mgfd import MGDGenerator, masked_features, mgd_loss, mgfd_pmd, random_token_mask


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_masked_features_hand_example():
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]],
                           [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    counts = torch.tensor([[0, 2, 1, 0], [0, 0, 0, 0]])
    f, has = masked_features(hidden, counts)
    # row 0: (2*[1,0] + 1*[0,2]) / 3 = [2/3, 2/3] -> normalised [1/sqrt2, 1/sqrt2]
    assert torch.allclose(f[0], torch.tensor(_norm([2 / 3, 2 / 3])), atol=1e-6)
    counts2 = torch.tensor([[0, 3, 1, 0], [0, 0, 0, 0]])
    f2, _ = masked_features(hidden, counts2)
    # (3*[1,0] + [0,2]) / 4 = [0.75, 0.5]: duplicates weigh, so a plain mean would give another direction
    assert torch.allclose(f2[0], torch.tensor(_norm([0.75, 0.5])), atol=1e-6)
    assert has.tolist() == [True, False]
    assert torch.equal(f[1], torch.zeros(2))


def test_mgfd_pmd_zero_without_masks_even_if_states_differ():
    s, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    assert float(mgfd_pmd(s, t, torch.zeros(3, 5, dtype=torch.long))) == 0.0


def test_mgfd_pmd_zero_for_identical_states():
    s = torch.randn(3, 5, 4)
    counts = torch.tensor([[0, 1, 0, 2, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]])
    assert float(mgfd_pmd(s, s.clone(), counts)) == 0.0
    assert float(mgfd_pmd(s, torch.randn(3, 5, 4), counts)) > 0.0


def test_mgfd_pmd_hand_value_with_an_unmasked_row():
    s = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [7.0, 7.0]],
                      [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [7.0, 7.0]],
                      [[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]])
    counts = torch.tensor([[0, 1, 0], [0, 0, 0]])
    # row 0: student [0.6, 0.8], teacher [1, 0] -> squared error 0.16 + 0.64 = 0.8; row 1: 0
    # mean over B x d = 4 entries
    got = mgfd_pmd(s, t, counts)
    assert got.dtype == torch.float32
    assert math.isclose(float(got), 0.8 / 4, rel_tol=1e-6)


def test_mgfd_pmd_width_mismatch_raises():
    counts = torch.tensor([[0, 1, 0]])
    with pytest.raises(ValueError):
        mgfd_pmd(torch.randn(1, 3, 4), torch.randn(1, 3, 6), counts)


def test_mgfd_pmd_under_autocast_is_float32():
    a = torch.randn(2, 4, 8)
    w = torch.randn(8, 8)
    counts = torch.tensor([[0, 1, 1, 0], [0, 2, 0, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = a @ w
        out = mgfd_pmd(s, s.clone() + 1, counts)
    assert out.dtype == torch.float32 and torch.isfinite(out)


# ---- MGD's generator: align -> zero hidden and padding positions -> Conv1d(k=3)-ReLU-Conv1d(k=3) -------------
@pytest.mark.parametrize("ds,dt", [(4, 8), (6, 6)])
def test_generator_shape_and_parameter_count(ds, dt):
    g = MGDGenerator(ds, dt)
    att = torch.ones(2, 5, dtype=torch.long)
    assert g(torch.randn(2, 5, ds), torch.zeros(2, 5, dtype=torch.bool), att).shape == (2, 5, dt)
    align = 0 if ds == dt else ds * dt + dt
    assert isinstance(g.align, nn.Identity) == (ds == dt)
    assert sum(p.numel() for p in g.parameters()) == align + 2 * (3 * dt * dt + dt)


def _set_taps(gen, first, second):
    """Both convolutions as scalar multiples of the identity per tap (left, centre, right), biases 0."""
    with torch.no_grad():
        for conv, taps in ((gen.generate[0], first), (gen.generate[2], second)):
            d = conv.weight.shape[0]
            conv.weight.copy_(torch.stack([w * torch.eye(d) for w in taps], dim=-1))
            conv.bias.zero_()


def _taps_reference(x, visible, first, second):
    """Plain loops: r[t] = relu(sum_j first[j] v[t + j - 1]), out[t] = sum_j second[j] r[t + j - 1], where v is x
    with the invisible positions zeroed and positions outside the sequence are 0 (the convolutions' padding)."""
    B, L, d = len(x), len(x[0]), len(x[0][0])
    v = [[[x[b][t][c] if visible[b][t] else 0.0 for c in range(d)] for t in range(L)] for b in range(B)]

    def conv(seq, taps):
        return [[sum(w * seq[t + j - 1][c] for j, w in enumerate(taps) if 0 <= t + j - 1 < L) for c in range(d)]
                for t in range(L)]

    return [conv([[max(0.0, y) for y in row] for row in conv(v[b], first)], second) for b in range(B)]


def test_mgd_loss_hand_value_with_hand_set_convolutions():
    first, second = (0.0, 1.0, 0.0), (0.5, 1.0, 0.25)  # out[t] = 0.5 r[t-1] + r[t] + 0.25 r[t+1], r = relu(v)
    gen = MGDGenerator(2, 2)
    _set_taps(gen, first, second)
    s = torch.tensor([[[1.0, -2.0], [40.0, 40.0], [3.0, 1.0], [2.0, 2.0]],   # position 1 hidden
                      [[-1.0, 4.0], [2.0, 0.0], [-30.0, 30.0], [50.0, 50.0]]])  # position 3 is padding
    t = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 0.0], [1.0, 1.0]],
                      [[0.0, 4.0], [1.0, 1.0], [0.0, 0.0], [1e3, -1e3]]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    hide = torch.tensor([[False, True, False, False], [False, False, False, False]])
    # row 0, r = [1,0], [0,0], [3,1], [2,2]:  out = [1, 0], [1.25, 0.25], [3.5, 1.5], [3.5, 2.5]
    # row 1, r = [0,4], [2,0], [0,30], [0,0]: out = [0.5, 4], [2, 9.5], [1, 30], (padding, not counted)
    # squared errors: row 0: 0 + (0.5625 + 0.5625) + (12.25 + 2.25) + (6.25 + 2.25)
    #                 row 1: (0.25 + 0) + (1 + 72.25) + (1 + 900); 7 real tokens x 2 dimensions
    expected_sq = 0 + 1.125 + 14.5 + 8.5 + 0.25 + 73.25 + 901
    ref = _taps_reference(s.tolist(), (att.bool() & ~hide).tolist(), first, second)
    loop_sq = sum((ref[b][i][c] - float(t[b, i, c])) ** 2 for b in range(2) for i in range(4) for c in range(2)
                  if att[b, i])
    assert loop_sq == pytest.approx(expected_sq)
    got = mgd_loss(s, t, att, gen, hide)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected_sq / 14, rel=1e-6)


@torch.no_grad()
def test_generator_zeroes_hidden_positions_after_the_alignment():
    gen = MGDGenerator(1, 2)
    gen.align.weight.copy_(torch.tensor([[2.0], [-1.0]]))
    gen.align.bias.copy_(torch.tensor([1.0, 1.0]))  # a bias that must not leak into hidden positions
    _set_taps(gen, (0.0, 1.0, 0.0), (0.0, 1.0, 0.0))  # out = relu(visible aligned states)
    x = torch.tensor([[[3.0], [5.0], [-4.0], [8.0]]])
    hide = torch.tensor([[False, True, False, False]])
    att = torch.tensor([[1, 1, 1, 0]])
    # aligned: [7, -2], [11, -4], [-7, 5], [17, -7]; hidden 1 and padding 3 -> 0; relu
    assert gen(x, hide, att).tolist() == [[[7.0, 0.0], [0.0, 0.0], [0.0, 5.0], [0.0, 0.0]]]


@torch.no_grad()
def test_mgd_loss_ignores_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 4), torch.randn(2, 6, 8)
    att = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    gen = MGDGenerator(4, 8)
    hide = random_token_mask(att, 0.5, torch.Generator().manual_seed(0))
    a = mgd_loss(s, t, att, gen, hide)
    t2, s2 = t.clone(), s.clone()
    t2[0, 4:] = 1e3  # the teacher at padding is not compared
    s2[0, 4:] = -1e3  # the student at padding never reaches the convolutions
    assert float(mgd_loss(s2, t2, att, gen, hide)) == pytest.approx(float(a), rel=1e-6)
    t3 = t.clone()
    t3[0, 3] += 1.0  # a real token does count
    assert float(mgd_loss(s, t3, att, gen, hide)) != pytest.approx(float(a), rel=1e-6)


@torch.no_grad()
def test_generator_output_at_real_tokens_does_not_depend_on_the_batchs_padding():
    # The same row alone (length 3) and padded to 5 by a longer row in its batch: padding must stay invisible,
    # as it is to the encoder. With random biases conv1 gives relu(b1 + W_left x[2]) != 0 at padding position 3,
    # and conv2 reads it at the last real token unless the padding is zeroed again between the convolutions.
    torch.manual_seed(0)
    gen = MGDGenerator(4, 4)
    x, t = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    hide = torch.tensor([[False, True, False]])
    alone = gen(x, hide, torch.ones(1, 3, dtype=torch.long))
    xp, tp = torch.cat([x, torch.randn(1, 2, 4)], 1), torch.cat([t, torch.randn(1, 2, 4)], 1)
    hp, mp = torch.cat([hide, torch.zeros(1, 2, dtype=torch.bool)], 1), torch.tensor([[1, 1, 1, 0, 0]])
    torch.testing.assert_close(gen(xp, hp, mp)[:, :3], alone, rtol=0, atol=1e-6)
    assert mgd_loss(xp, tp, mp, gen, hp).item() == pytest.approx(
        mgd_loss(x, t, torch.ones(1, 3, dtype=torch.long), gen, hide).item(), rel=1e-6)


def test_mgd_loss_under_autocast_is_float32():
    gen = MGDGenerator(8, 8)
    att = torch.ones(2, 4, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mgd_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8), att, gen, torch.zeros(2, 4, dtype=torch.bool))
    assert out.dtype == torch.float32 and torch.isfinite(out)


# ---- acceptance (issue 19): the generator rebuilds hidden positions from their visible neighbours ------------
def test_hidden_position_is_rebuilt_from_its_neighbours_and_trains_them():
    torch.manual_seed(0)
    gen = MGDGenerator(4, 4)
    x = torch.randn(1, 7, 4)
    att = torch.ones(1, 7, dtype=torch.long)
    hide = torch.zeros(1, 7, dtype=torch.bool)
    hide[0, 3] = True
    base = gen(x, hide, att)[0, 3].detach()
    changed = []
    for pos in range(7):  # which student positions move the output at the hidden position 3?
        y = x.clone()
        y[0, pos] += 1.0
        changed.append(bool((gen(y, hide, att)[0, 3].detach() - base).abs().max() > 1e-6))
    # two kernel-3 convolutions reach +-2 tokens; the hidden position itself is zeroed
    assert changed == [False, True, True, False, True, True, False]

    # the error at the hidden position sends gradient to the visible neighbours (through the convolutions)
    s = x.clone().requires_grad_(True)
    t = torch.randn(1, 7, 4)
    (gen(s, hide, att)[0, 3] - t[0, 3]).pow(2).sum().backward()
    reached = s.grad[0].abs().sum(-1) > 0
    assert reached.tolist() == [False, True, True, False, True, True, False]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.generate.parameters())

    # the whole loss: nothing reaches the hidden state itself, every visible one is trained
    s.grad = None
    mgd_loss(s, t, att, gen, hide).backward()
    assert float(s.grad[0, 3].abs().sum()) == 0.0
    assert (s.grad[0, [0, 1, 2, 4, 5, 6]].abs().sum(-1) > 0).all()


@torch.no_grad()
def test_a_per_token_generator_outputs_the_constant_g0_at_hidden_positions():
    # the old behaviour (a per-token map over the masked states): kernel 1 sees only the zeros there
    torch.manual_seed(0)
    per_token, conv = MGDGenerator(4, 4, kernel=1), MGDGenerator(4, 4)
    x = torch.randn(3, 6, 4)
    att = torch.ones(3, 6, dtype=torch.long)
    hide = torch.zeros(3, 6, dtype=torch.bool)
    hide[0, 1] = hide[1, 3] = hide[2, 4] = True
    g0 = per_token.generate(torch.zeros(1, 4, 1))[0, :, 0]  # G(0)
    for out in (per_token(x, hide, att), per_token(x * 5 + 1, hide, att)):
        for b, i in ((0, 1), (1, 3), (2, 4)):
            torch.testing.assert_close(out[b, i], g0)
    rebuilt = conv(x, hide, att)[hide]
    assert (rebuilt - rebuilt[0]).abs().max() > 1e-3  # the conv generator's outputs there differ by context


def _toy_batch(g, B=32, L=12, d=8):
    """Student states; teacher[t] = relu(s[t-1]) + relu(s[t+1]) (0 outside); hidden positions every third
    token from a random offset, so each hidden token's neighbours are visible."""
    s = torch.randn(B, L, d, generator=g)
    r = torch.nn.functional.pad(s.relu(), (0, 0, 1, 1))
    t = r[:, :-2] + r[:, 2:]
    hide = (torch.arange(L).unsqueeze(0) + torch.randint(0, 3, (B, 1), generator=g)) % 3 == 0
    return s, t, hide


@pytest.fixture
def one_thread():
    """Tiny ops: intra-op threads only contend (on 2 shared cores the toy run below is ~10x slower with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generator_beats_the_best_constant_on_a_toy_reconstruction(one_thread):
    torch.manual_seed(0)
    conv, per_token = MGDGenerator(8, 8), MGDGenerator(8, 8, kernel=1)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (conv, per_token)]
    g = torch.Generator().manual_seed(1)
    att = torch.ones(32, 12, dtype=torch.long)
    for _ in range(300):  # trained on MGD's loss over every real token, as the term trains it
        s, t, hide = _toy_batch(g)
        for gen, opt in zip((conv, per_token), opts):
            opt.zero_grad()
            mgd_loss(s, t, att, gen, hide).backward()
            opt.step()
    s, t, hide = _toy_batch(torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = t[hide]
        best_constant = (target - target.mean(0)).pow(2).mean()  # G(0)-style: the mean teacher state
        rebuilt = (conv(s, hide, att)[hide] - target).pow(2).mean()
        constant = (per_token(s, hide, att)[hide] - target).pow(2).mean()
    assert float(rebuilt) < 0.5 * float(best_constant)
    assert float(constant) >= float(best_constant) * (1 - 1e-5)  # a constant can do no better


def test_random_token_mask_never_selects_padding_and_has_rate():
    lengths = torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0))
    att = (torch.arange(200).unsqueeze(0) < lengths.unsqueeze(1)).long()
    m = random_token_mask(att, 0.3, torch.Generator().manual_seed(1))
    assert m.dtype == torch.bool and m.shape == att.shape
    assert not (m & ~att.bool()).any()
    rate = m.sum().item() / att.sum().item()
    assert abs(rate - 0.3) < 0.01
    assert not random_token_mask(att, 0.0).any()


def test_random_token_mask_is_deterministic_with_generator():
    att = torch.ones(4, 10, dtype=torch.long)
    a = random_token_mask(att, 0.5, torch.Generator().manual_seed(3))
    b = random_token_mask(att, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
