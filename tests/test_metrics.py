import pytest
import torch

from kgc_kd.eval.metrics import direction_metrics, rank_metrics
from kgc_kd.eval.ranks import Ranks


def test_rank_metrics_hand_computed():
    m = rank_metrics(torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0]))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.1 + 0.05) / 5)
    assert m["mr"] == pytest.approx(37 / 5)
    assert m["hits@1"] == pytest.approx(0.2)
    assert m["hits@3"] == pytest.approx(0.4)
    assert m["hits@10"] == pytest.approx(0.8)
    assert set(m) == {"mrr", "mr", "hits@1", "hits@3", "hits@10"}


def test_rank_metrics_realistic_half_ranks_and_custom_ks():
    m = rank_metrics(torch.tensor([1.5, 1.0, 3.5, 2.0]), ks=(1, 2, 5))
    assert m["hits@1"] == pytest.approx(0.25)  # 1.5 is not <= 1
    assert m["hits@2"] == pytest.approx(0.75)
    assert m["hits@5"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 / 1.5 + 1 + 1 / 3.5 + 0.5) / 4)
    assert "hits@10" not in m


def test_rank_metrics_accepts_integer_ranks():
    assert rank_metrics(torch.tensor([1, 2]))["mrr"] == pytest.approx(0.75)


def test_rank_metrics_rejects_empty_and_invalid():
    with pytest.raises(ValueError, match="empty"):
        rank_metrics(torch.tensor([]))
    with pytest.raises(ValueError):
        rank_metrics(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        rank_metrics(torch.tensor([float("nan")]))


def _ranks(values):
    t = torch.tensor(values, dtype=torch.float32)
    return Ranks(optimistic=t.clone(), pessimistic=t.clone(), realistic=t.clone())


def test_direction_metrics_mean_of_directions():
    ranks = _ranks([1.0, 2.0, 4.0])  # tail, tail, head
    is_head = torch.tensor([False, False, True])
    m = direction_metrics(ranks, is_head)
    assert m["tail/mrr"] == pytest.approx(0.75)
    assert m["head/mrr"] == pytest.approx(0.25)
    # macro mean (0.5), not the micro mean over all queries (0.5833)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["tail/mr"] == pytest.approx(1.5)
    assert m["head/mr"] == pytest.approx(4.0)
    assert m["mr"] == pytest.approx(2.75)
    assert m["tail/hits@1"] == pytest.approx(0.5)
    assert m["head/hits@1"] == pytest.approx(0.0)
    assert m["hits@1"] == pytest.approx(0.25)
    assert m["hits@3"] == pytest.approx(0.5)
    assert m["hits@10"] == pytest.approx(1.0)
    assert m["tail/count"] == 2 and m["head/count"] == 1
    assert m["num_queries"] == 3


def test_direction_metrics_one_direction_empty():
    ranks = _ranks([1.0, 4.0])
    m = direction_metrics(ranks, torch.tensor([False, False]))
    for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10"):
        assert m[key] == pytest.approx(m[f"tail/{key}"])
    assert m["mrr"] == pytest.approx(0.625)
    assert m["head/count"] == 0
    assert "head/mrr" not in m

    m = direction_metrics(ranks, torch.tensor([True, True]))
    assert m["mrr"] == pytest.approx(m["head/mrr"]) == pytest.approx(0.625)
    assert "tail/mrr" not in m


def test_direction_metrics_rank_type():
    ranks = Ranks(
        optimistic=torch.tensor([1.0, 1.0]),
        pessimistic=torch.tensor([3.0, 1.0]),
        realistic=torch.tensor([2.0, 1.0]),
    )
    is_head = torch.tensor([False, True])
    assert direction_metrics(ranks, is_head)["tail/mrr"] == pytest.approx(0.5)
    assert direction_metrics(ranks, is_head, rank_type="optimistic")["tail/mrr"] == pytest.approx(1.0)
    assert direction_metrics(ranks, is_head, rank_type="pessimistic")["tail/mrr"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        direction_metrics(ranks, is_head, rank_type="best")


def test_direction_metrics_validation():
    with pytest.raises(ValueError):
        direction_metrics(_ranks([1.0, 2.0]), torch.tensor([True]))
    with pytest.raises(ValueError):
        direction_metrics(_ranks([]), torch.tensor([], dtype=torch.bool))
