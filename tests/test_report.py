"""kgc_kd.chain.report: the printed summary table and per-query prediction lines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.eval import RankingOutput, Ranks
from kgc_kd.chain.report import format_report, report_rows, write_predictions, write_report


# ---- stage report ----------------------------------------------------------------------------------------
def _row(name, layers, params, mrr, qps, kind="student"):
    test = {"mrr": mrr, "mr": 10.0 / mrr, "hits@1": mrr / 2, "hits@3": mrr, "hits@10": min(1.0, 2 * mrr)}
    row = {"name": name, "kind": kind, "layers": layers, "params_total": params, "params_no_embeddings": params // 2,
           "params_query": params // 2, "params_entity": params // 2, "best_val_mrr": mrr + 0.01, "test": test,
           "queries_per_s": qps, "entities_per_s": 2 * qps, "latency_device": "cpu", "steps": 10, "fit_time_s": 1.0,
           "plm": "minilm"}
    if kind == "student":
        row.update(teacher_layers=6, init="teacher", layer_map=[1, 3], mask_rate=0.1, alpha=0.1, beta=0.1, pkd=0.0,
                   score_loss="mse", mgfd="pmd")
    return row


def _report():
    return {"run_dir": "runs/x", "data": "umls: 135 entities", "wall_time_s": 5.0,
            "untrained_test": {"mrr": 0.1, "mr": 40.0, "hits@1": 0.0, "hits@3": 0.1, "hits@10": 0.25},
            "stages": [_row("teacher", 6, 40_000_000, 0.8, 100.0, kind="teacher"), _row("pmd2", 2, 20_000_000, 0.6, 300.0)]}


def test_report_rows_change_against_the_teacher():
    rows = report_rows(_report())
    assert rows[0]["params_total_change_pct"] == 0.0 and rows[0]["test/mrr_change_pct"] == 0.0
    assert rows[1]["params_total_change_pct"] == -50.0
    assert rows[1]["test/mrr_change_pct"] == -25.0
    assert rows[1]["queries_per_s_change_pct"] == 200.0
    assert rows[1]["test/mrr"] == 0.6


def test_format_report_table():
    lines = format_report(_report()).splitlines()
    assert "| untrained PLM |  |  |  | 0.1000 | 40.0 | 0.0000 | 0.1000 | 0.2500 |  |  |" in lines
    teacher = next(line for line in lines if line.startswith("| teacher"))
    student = next(line for line in lines if line.startswith("| pmd2"))
    assert "40.0M / 20.0M (+0.0%)" in teacher and "0.8000 (+0.0%)" in teacher
    assert "20.0M / 10.0M (-50.0%)" in student and "0.6000 (-25.0%)" in student and "300 (+200.0%)" in student


def test_write_report_files(tmp_path):
    text = write_report(tmp_path, _report())
    for name in ("report.json", "report.md", "report.png", "metrics.json", "summary.txt"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["teacher", "pmd2"]
    assert (tmp_path / "report.md").read_text().strip() == text.strip()
    assert not list(tmp_path.glob(".*tmp*"))


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
    assert not list(tmp_path.rglob(".*.tmp"))  # written atomically: no temporary file left


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


def test_report_says_which_precision_ran():
    result = {**_report(), "precision": "bf16-mixed", "precision_reason": "trainer.precision unset: CUDA device "
              "with bf16 support", "float32_matmul_precision": "high"}
    assert ("precision: bf16-mixed (trainer.precision unset: CUDA device with bf16 support); float32 matmul "
            "precision high (TF32)") in format_report(result).splitlines()
    cpu = {**_report(), "precision": "32-true", "precision_reason": "trainer.precision unset: no CUDA device",
           "float32_matmul_precision": None}
    assert "precision: 32-true (trainer.precision unset: no CUDA device)" in format_report(cpu).splitlines()


def test_the_report_names_the_test_split_of_its_metrics_and_the_stages_evaluated_again():
    result = _report()
    assert not any(line.startswith("Every row's test split") for line in format_report(result).splitlines())  # not recorded
    split = {"sha256": "ab" * 32, "triples": 40}
    result["stages"][0].update(test_data=split, retested_from="cd" * 32)
    result["stages"][1].update(test_data=split)
    lines = format_report(result).splitlines()
    assert ("Every row's test split: 40 triples, sha256 abababababab; evaluated again on it, not trained (reused from a run on "
            "another test split): teacher") in lines
