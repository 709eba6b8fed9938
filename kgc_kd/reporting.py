"""What a run leaves behind for people: metrics.json, per-query predictions, a printed summary.

Every file is written to a temporary name and renamed into place, so an interrupted run never leaves a
half-written report that a later tool would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_predictions(path: Path, kg, evaluation: dict) -> None:
    """One JSON line per test query: the query, gold, its realistic rank and the filtered top-k."""
    triples = evaluation["triples"].tolist()
    out = evaluation["output"]
    ranks = out.ranks
    lines = []
    for i, (h, r, t) in enumerate(triples):
        row = {
            "head": kg.entity_ids[h], "relation": kg.relation_text(r), "tail": kg.entity_ids[t],
            "direction": "head" if r >= kg.num_relations else "tail",
            "rank": float(ranks.realistic[i]), "rank_optimistic": float(ranks.optimistic[i]),
            "rank_pessimistic": float(ranks.pessimistic[i]),
        }
        if out.topk_ids is not None:
            # slots past the candidates left after filtering come back as id -1: not an entity
            row["topk"] = [[kg.entity_ids[e], round(float(s), 5)]
                           for e, s in zip(out.topk_ids[i].tolist(), out.topk_scores[i].tolist()) if e >= 0]
        lines.append(json.dumps(row))
    write_text_atomic(path, "\n".join(lines) + "\n")


def _fmt_row(name: str, m: dict | None) -> str:
    if not m:
        return f"| {name} | - | - | - | - | - |"
    return (f"| {name} | {m['mrr']:.4f} | {m['mr']:.1f} | {m['hits@1']:.4f} | {m['hits@3']:.4f} "
            f"| {m['hits@10']:.4f} |")


def format_summary(result: dict) -> str:
    test = result["test"]
    rows = [
        f"run: {result['run_dir']}",
        f"data: {result['data']}",
        f"epochs {result['epochs']}, steps {result['steps']}, wall time {result['wall_time_s']} s, "
        f"temperature {result['temperature']:.4f}, best val MRR {result['best_val_mrr']}",
        "",
        "| test (filtered, realistic rank) | MRR | MR | Hits@1 | Hits@3 | Hits@10 |",
        "|---|---|---|---|---|---|",
        _fmt_row("untrained encoder", result.get("untrained_test")),
        _fmt_row("trained: tail prediction", {k[5:]: v for k, v in test.items() if k.startswith("tail/")}),
        _fmt_row("trained: head prediction", {k[5:]: v for k, v in test.items() if k.startswith("head/")}),
        _fmt_row("trained: both (mean)", test),
    ]
    if result.get("best_checkpoint"):
        rows.append(f"\nbest checkpoint: {result['best_checkpoint']}")
    return "\n".join(rows)
