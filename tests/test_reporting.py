"""kgc_kd.reporting: atomic writes, the printed summary table and per-query prediction lines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.eval import RankingOutput, Ranks
from kgc_kd.reporting import format_summary, write_json_atomic, write_predictions, write_text_atomic


def _temps(d):
    return sorted(p.name for p in d.rglob(".*.tmp"))


# ---- atomic writes --------------------------------------------------------------------------------------
def test_write_text_atomic_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "summary.txt"
    write_text_atomic(path, "first\n")
    assert path.read_text(encoding="utf-8") == "first\n"
    write_text_atomic(path, "second ü\n")
    assert path.read_text(encoding="utf-8") == "second ü\n"
    assert _temps(tmp_path) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.txt"]


def test_write_json_atomic_roundtrip(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    obj = {"mrr": 0.5, "nested": {"list": [1, 2, None], "flag": True}, "name": "x"}
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == obj
    assert path.read_text().endswith("\n")
    assert _temps(tmp_path) == []


def test_write_json_atomic_failure_keeps_previous(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"ok": 1})
    before = path.read_text()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"ok": 2, "bad": object()})
    assert path.read_text() == before
    assert _temps(tmp_path) == []


def test_write_text_atomic_failure_midway_keeps_previous(tmp_path):
    path = tmp_path / "summary.txt"
    write_text_atomic(path, "old\n")
    # a lone surrogate passes str checks but fails while the temp file is being written
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "new text \ud800 more\n")
    assert path.read_text() == "old\n"
    assert _temps(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["summary.txt"]


# ---- summary ---------------------------------------------------------------------------------------------
def _result(untrained):
    test = {
        "tail/count": 2.0, "tail/mrr": 0.6, "tail/mr": 3.0, "tail/hits@1": 0.5, "tail/hits@3": 0.5,
        "tail/hits@10": 1.0,
        "head/count": 2.0, "head/mrr": 0.275, "head/mr": 11.0, "head/hits@1": 0.0, "head/hits@3": 0.5,
        "head/hits@10": 0.5,
        "mrr": 0.4375, "mr": 7.0, "hits@1": 0.25, "hits@3": 0.5, "hits@10": 0.75, "num_queries": 4.0,
    }
    return {
        "run_dir": "runs/umls-abc", "data": "umls: 135 entities", "test": test, "best_val_mrr": 0.41,
        "best_checkpoint": "runs/umls-abc/checkpoints/best.ckpt", "untrained_test": untrained,
        "epochs": 3, "steps": 120, "temperature": 0.0512345, "wall_time_s": 12.3,
    }


def test_format_summary_table():
    text = format_summary(_result(None))
    lines = text.splitlines()
    assert "run: runs/umls-abc" in lines
    assert "data: umls: 135 entities" in lines
    assert "temperature 0.0512" in text and "epochs 3, steps 120" in text and "best val MRR 0.41" in text
    assert "| test (filtered, realistic rank) | MRR | MR | Hits@1 | Hits@3 | Hits@10 |" in lines
    assert "|---|---|---|---|---|---|" in lines
    assert "| untrained encoder | - | - | - | - | - |" in lines
    assert "| trained: tail prediction | 0.6000 | 3.0 | 0.5000 | 0.5000 | 1.0000 |" in lines
    assert "| trained: head prediction | 0.2750 | 11.0 | 0.0000 | 0.5000 | 0.5000 |" in lines
    assert "| trained: both (mean) | 0.4375 | 7.0 | 0.2500 | 0.5000 | 0.7500 |" in lines
    assert "best checkpoint: runs/umls-abc/checkpoints/best.ckpt" in text
    # table rows come in this order
    idx = [next(i for i, l in enumerate(lines) if l.startswith(f"| {n}"))
           for n in ("untrained", "trained: tail", "trained: head", "trained: both")]
    assert idx == sorted(idx)


def test_format_summary_untrained_row_and_no_checkpoint():
    res = _result({"mrr": 0.12345, "mr": 40.04, "hits@1": 0.05, "hits@3": 0.1, "hits@10": 0.25})
    res["best_checkpoint"] = None
    text = format_summary(res)
    assert "| untrained encoder | 0.1235 | 40.0 | 0.0500 | 0.1000 | 0.2500 |" in text.splitlines()
    assert "best checkpoint" not in text


# ---- predictions ------------------------------------------------------------------------------------------
def _evaluation(kg, topk=True):
    R = kg.num_relations
    triples = torch.tensor([[0, 1, 5], [3, 0 + R, 7], [2, 2, 4]])
    ranks = Ranks(optimistic=torch.tensor([1.0, 2.0, 3.0]), pessimistic=torch.tensor([1.0, 4.0, 3.0]),
                  realistic=torch.tensor([1.0, 3.0, 3.0]))
    if topk:
        ids = torch.tensor([[5, 1], [9, 7], [0, 4]])
        scores = torch.tensor([[0.9, 0.123456789], [0.8, 0.7], [0.6, -0.25]])
        out = RankingOutput(ranks, ids, scores)
    else:
        out = RankingOutput(ranks, None, None)
    return {"triples": triples, "output": out, "metrics": {}}


def test_write_predictions_lines(tmp_path):
    kg = synthetic_kg(num_entities=12, num_relations=3, num_triples=40)
    path = tmp_path / "preds" / "predictions_test.jsonl"
    write_predictions(path, kg, _evaluation(kg))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    r0, r1, r2 = rows
    assert (r0["head"], r0["tail"], r0["relation"], r0["direction"]) == ("e0", "e5", kg.relation_texts[1], "tail")
    assert r1["direction"] == "head"
    assert r1["relation"] == "inverse " + kg.relation_texts[0]
    assert (r1["head"], r1["tail"]) == ("e3", "e7")
    assert r2["direction"] == "tail"
    assert (r1["rank"], r1["rank_optimistic"], r1["rank_pessimistic"]) == (3.0, 2.0, 4.0)
    assert r0["topk"] == [["e5", 0.9], ["e1", 0.12346]]
    assert r1["topk"] == [["e9", 0.8], ["e7", 0.7]]
    assert r2["topk"] == [["e0", 0.6], ["e4", -0.25]]
    assert _temps(tmp_path) == []


def test_write_predictions_without_topk(tmp_path):
    kg = synthetic_kg(num_entities=12, num_relations=3, num_triples=40)
    path = tmp_path / "p.jsonl"
    write_predictions(path, kg, _evaluation(kg, topk=False))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    assert all("topk" not in r for r in rows)


def test_write_predictions_skips_empty_topk_slots(tmp_path):
    kg = synthetic_kg(num_entities=12, num_relations=3, num_triples=40)
    ranks = Ranks(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    # RankingOutput documents id -1 / score -inf for a slot left without a valid candidate
    out = RankingOutput(ranks, torch.tensor([[5, -1]]), torch.tensor([[0.9, float("-inf")]]))
    path = tmp_path / "p.jsonl"
    write_predictions(path, kg, {"triples": torch.tensor([[0, 1, 5]]), "output": out})

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")

    row = json.loads(path.read_text().splitlines()[0], parse_constant=strict)
    ids = [e for e, _ in row["topk"]]
    assert kg.entity_ids[-1] not in ids
    assert all(math.isfinite(s) for _, s in row["topk"])
