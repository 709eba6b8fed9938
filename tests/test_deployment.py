"""kgc_kd/serve/deployment.py: the smallest and fastest variant within 1% of each grade's fp32 test MRR."""

import pytest

from kgc_kd.serve.deployment import deployment, format_deployment


def _row(stage, variant, mrr, nbytes, p50):
    return {"stage": stage, "variant": variant, "test": {"mrr": mrr}, "bytes_on_disk": nbytes,
            "latency_ms": {"p50": p50, "p95": p50, "p99": p50}}


ROWS = [
    _row("teacher", "fp32", 0.80, 1000, 10.0),
    _row("teacher", "onnx-int8", 0.70, 250, 2.0),  # 12.5% worse: outside 1%
    _row("pmd2", "fp32", 0.60, 100, 2.0),
    _row("pmd2", "onnx-fp32", 0.60, 100, 1.0),  # ties fp32 on bytes, faster
    _row("pmd2", "onnx-int8", 0.5950, 25, 0.5),  # 0.83% worse: inside 1%
    _row("pmd2", "bf16", 0.5939, 50, 0.25),  # 1.02% worse: outside 1%
]


def test_each_grade_picks_within_one_percent_of_its_own_fp32():
    dep = deployment(ROWS)
    assert dep["baseline"] == {"stage": "teacher", "variant": "fp32", "bytes": 1000, "p50_ms": 10.0, "mrr": 0.80}
    teacher = dep["grades"]["teacher"]
    assert teacher["smallest"]["variant"] == teacher["fastest"]["variant"] == "fp32"  # int8 is 12.5% worse
    pmd2 = dep["grades"]["pmd2"]
    assert pmd2["smallest"]["variant"] == "onnx-int8" and pmd2["fastest"]["variant"] == "onnx-int8"  # bf16 is out
    assert pmd2["smallest"]["bytes_x_fewer"] == 40.0  # 1000 / 25
    assert pmd2["fastest"]["p50_x_lower"] == 20.0  # 10 / 0.5
    assert pmd2["smallest"]["mrr_of_teacher"] == pytest.approx(0.595 / 0.8, abs=1e-4)


def test_smallest_within_95_percent_of_the_teacher():
    rows = ROWS + [_row("pmd4", "onnx-int8", 0.77, 60, 1.0)]  # 96.25% of 0.80
    best = deployment(rows)["smallest_within_95pct_of_teacher"]
    assert (best["stage"], best["variant"], best["bytes_x_fewer"]) == ("pmd4", "onnx-int8", round(1000 / 60, 2))
    assert deployment(ROWS)["smallest_within_95pct_of_teacher"]["stage"] == "teacher"  # only the teacher keeps 95%


def test_without_a_teacher_fp32_there_is_no_baseline_and_no_ratio():
    dep = deployment([r for r in ROWS if r["stage"] == "pmd2"])
    assert dep["baseline"] is None and "bytes_x_fewer" not in dep["grades"]["pmd2"]["smallest"]
    assert "smallest_within_95pct_of_teacher" not in dep


def test_the_table_names_each_grade_with_its_ratios():
    text = format_deployment(deployment(ROWS))
    assert "| pmd2 | 0.6000 | onnx-int8 | 0.0 MB (40.0x) | 0.5950 | onnx-int8 | 0.50 (20.0x) | 0.5950 |" in text
    assert "teacher fp32: 0.0 MB, p50 10.00 ms" in text
