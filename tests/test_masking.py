import math

import pytest
import torch

from kgc_kd.distill.masking import mask_tokens

MASK = 4
PAD = 0


def _batch(lengths, max_len=None, seed=0):
    """Right-padded ids in 5..99 (never the mask id or padding) and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    max_len = max_len or max(lengths)
    ids = torch.randint(5, 100, (len(lengths), max_len), generator=g)
    mask = (torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids * mask, mask


def test_rate_zero_returns_ids_and_zero_counts():
    ids, att = _batch([5, 9, 3])
    out, counts = mask_tokens(ids, att, 0.0, MASK)
    assert torch.equal(out, ids)
    assert counts.shape == ids.shape and counts.dtype == torch.long and int(counts.abs().sum()) == 0


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_range_raises(rate):
    ids, att = _batch([5])
    with pytest.raises(ValueError):
        mask_tokens(ids, att, rate, MASK)


def test_masks_only_inner_real_positions_with_right_counts():
    g = torch.Generator().manual_seed(0)
    rates = [0.05, 0.1, 0.2, 0.5, 0.9]
    for trial in range(40):
        lengths = torch.randint(1, 31, (8,), generator=g).tolist()
        ids, att = _batch(lengths, max_len=32, seed=trial)
        rate = rates[trial % len(rates)]
        out, counts = mask_tokens(ids, att, rate, MASK, generator=g)
        assert counts.dtype == torch.long and (counts >= 0).all()
        for b, L in enumerate(lengths):
            row = counts[b]
            expected_k = math.floor(rate * L) if L > 2 else 0
            assert int(row.sum()) == expected_k, (rate, L)
            assert row[0] == 0  # [CLS]
            if L >= 1:
                assert row[L - 1] == 0  # final [SEP]
            assert (row[L:] == 0).all()  # padding
            # masked positions carry the mask id, every other token is unchanged
            hit = row > 0
            assert (out[b][hit] == MASK).all()
            assert torch.equal(out[b][~hit], ids[b][~hit])


def test_counts_keep_duplicates():
    # L = 3: only position 1 can be drawn, floor(0.9 * 3) = 2 draws both land on it
    ids, att = _batch([3, 3])
    out, counts = mask_tokens(ids, att, 0.9, MASK, generator=torch.Generator().manual_seed(0))
    assert counts.tolist() == [[0, 2, 0], [0, 2, 0]]
    assert out[:, 1].tolist() == [MASK, MASK]
    assert torch.equal(out[:, [0, 2]], ids[:, [0, 2]])


def test_duplicates_occur_and_distinct_positions_at_most_draws():
    # 20 draws from 8 inner positions must repeat; masked distinct positions <= draws
    ids, att = _batch([10] * 4)
    out, counts = mask_tokens(ids, att, 0.9, MASK, generator=torch.Generator().manual_seed(1))
    assert (counts.sum(1) == 9).all()
    assert ((counts > 0).sum(1) < 9).all()  # pigeonhole: 9 draws, 8 slots
    assert ((out == MASK).sum(1) == (counts > 0).sum(1)).all()


def test_short_sequences_untouched():
    ids, att = _batch([1, 2, 2], max_len=5)
    out, counts = mask_tokens(ids, att, 0.9, MASK, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ids) and int(counts.sum()) == 0


def test_only_long_rows_are_masked_in_a_mixed_batch():
    ids, att = _batch([2, 20], max_len=20)
    out, counts = mask_tokens(ids, att, 0.5, MASK, generator=torch.Generator().manual_seed(0))
    assert int(counts[0].sum()) == 0 and torch.equal(out[0], ids[0])
    assert int(counts[1].sum()) == 10


def test_positions_cover_the_whole_inner_range():
    ids, att = _batch([6] * 200)
    _, counts = mask_tokens(ids, att, 0.5, MASK, generator=torch.Generator().manual_seed(0))
    hits = (counts > 0).sum(0)
    assert (hits[1:5] > 0).all() and hits[0] == 0 and hits[5] == 0


def test_seeded_generator_is_deterministic():
    ids, att = _batch([7, 12, 30, 4], max_len=32)
    a = mask_tokens(ids, att, 0.3, MASK, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, att, 0.3, MASK, generator=torch.Generator().manual_seed(5))
    c = mask_tokens(ids, att, 0.3, MASK, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_input_not_modified_in_place():
    ids, att = _batch([12, 9])
    before = ids.clone()
    mask_tokens(ids, att, 0.5, MASK, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, before)


def _old_mask_tokens(input_ids, attention_mask, rate, mask_id, generator=None):
    """The algorithm before issue 26: max(k) read back from the tensor (a host sync on CUDA)."""
    counts = torch.zeros_like(input_ids)
    lengths = attention_mask.sum(1)
    k = torch.floor(rate * lengths.double()).long()
    k = torch.where(lengths > 2, k, torch.zeros_like(k))
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return input_ids, counts
    u = torch.rand(input_ids.shape[0], kmax, generator=generator, device="cpu").to(input_ids.device)
    span = (lengths - 2).clamp(min=1).unsqueeze(1)
    pos = 1 + torch.floor(u * span).long()
    keep = torch.arange(kmax, device=input_ids.device).unsqueeze(0) < k.unsqueeze(1)
    counts.scatter_add_(1, pos, keep.long())
    return input_ids.masked_fill(counts > 0, mask_id), counts


def test_same_masks_and_generator_state_as_the_old_algorithm_on_dynamically_padded_batches():
    g = torch.Generator().manual_seed(123)
    rates = [0.05, 0.1, 0.15, 0.3, 0.5, 0.9]
    for trial in range(200):
        n = int(torch.randint(1, 17, (1,), generator=g))
        lengths = torch.randint(1, 60, (n,), generator=g).tolist()  # padded to the longest, as the collator does
        ids, att = _batch(lengths, seed=trial)
        rate = rates[trial % len(rates)]
        old_g, new_g = torch.Generator().manual_seed(trial), torch.Generator().manual_seed(trial)
        old = _old_mask_tokens(ids, att, rate, MASK, generator=old_g)
        new = mask_tokens(ids, att, rate, MASK, generator=new_g)
        assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1]), (trial, lengths, rate)
        assert torch.equal(old_g.get_state(), new_g.get_state())  # the same draws consumed
    # and with the global generator (what the distillation step uses)
    ids, att = _batch([5, 17, 33, 2])
    torch.manual_seed(7)
    old = _old_mask_tokens(ids, att, 0.15, MASK)
    after_old = torch.rand(3)
    torch.manual_seed(7)
    new = mask_tokens(ids, att, 0.15, MASK)
    assert torch.equal(old[1], new[1]) and torch.equal(after_old, torch.rand(3))


def test_no_value_is_read_back_from_the_tensors(monkeypatch):
    """The draw count comes from the shape: no .item()/int()/bool() of a tensor (each a host sync on CUDA)."""
    ids, att = _batch([5, 17, 33, 2])

    def refuse(*_a, **_k):
        raise AssertionError("a tensor value was read on the host")

    for name in ("item", "__int__", "__bool__", "__index__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    out, counts = mask_tokens(ids, att, 0.3, MASK, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert int(counts.sum()) == sum(math.floor(0.3 * L) for L in [5, 17, 33])
