"""A chain's models side by side: parameters and inference latency of every stage, against the teacher.

Latency does not depend on what the weights have learnt, so the students are cut from the PLM teacher
exactly as the chain cuts them (same layer maps, shared encoder and vocabulary pruning as configured)
without training them; `--run DIR` measures a finished run's exported stages instead. Every model
encodes the same fixed batches (the test queries, all entities) in eval mode without gradients.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from experiments.bench.measure import timed
from kgc_kd.chain.driver import build_stage
from kgc_kd.config import to_plain
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.models.biencoder import BiEncoder, build_biencoder
from kgc_kd.models.size import parameter_counts
from kgc_kd.models.student import num_layers


def chain_models(cfg: DictConfig, dm: KGDataModule, tokenizer) -> list[tuple[str, BiEncoder]]:
    """(name, bi-encoder) for the teacher and each configured stage, each cut from the one before."""
    teacher = build_biencoder(to_plain(cfg.model)).eval()
    models, prev = [("teacher", teacher)], teacher
    for i, st in enumerate(cfg.stages):
        student = build_stage(cfg, i, prev, dm, tokenizer).net.eval()
        models.append((st.name, student))
        prev = student
    return models


def exported_models(run_dir) -> list[tuple[str, BiEncoder]]:
    from pathlib import Path

    stages = Path(run_dir) / "stages"
    order = ["teacher"] + sorted(p.name for p in stages.iterdir() if p.name != "teacher")
    return [(n, BiEncoder.from_pretrained(stages / n / "export", source_ids=True))
            for n in order if (stages / n / "export" / "biencoder.json").is_file()]


@torch.no_grad()
def stage_latency(models: list[tuple[str, BiEncoder]], dm: KGDataModule, *, warmup: int, repeats: int,
                  device: torch.device | str = "cpu", split: str = "test") -> list[dict]:
    q_batches = [{k: v.to(device) for k, v in b["hr"].items()} for b in dm.query_dataloader(split)]
    e_batches = [{k: v.to(device) for k, v in b["entity"].items()} for b in dm.entity_dataloader()]
    n_q = sum(len(b["input_ids"]) for b in q_batches)
    n_e = sum(len(b["input_ids"]) for b in e_batches)
    rows = []
    for name, net in models:
        net = net.to(device).eval()
        q = timed(lambda: [net.encode_query(b) for b in q_batches], warmup=warmup, repeats=repeats, device=device)
        e = timed(lambda: [net.encode_entity(b) for b in e_batches], warmup=warmup, repeats=repeats, device=device)
        rows.append({"stage": name, "layers": num_layers(net.query_encoder), "shared_encoder": net.shared,
                     "vocab_size": net.query_encoder.config.vocab_size, **parameter_counts(net),
                     "query_batch_ms": 1000 * q["median_s"] / len(q_batches),
                     "entity_batch_ms": 1000 * e["median_s"] / len(e_batches),
                     "queries_per_s": n_q / q["median_s"], "entities_per_s": n_e / e["median_s"],
                     "batch_size": dm.eval_batch_size})
        net.cpu()
    ref = rows[0]
    for r in rows:
        r["params_ratio"] = r["params_total"] / ref["params_total"]
        r["params_reduction_pct"] = 100.0 * (1 - r["params_ratio"])
        r["query_speedup"] = r["queries_per_s"] / ref["queries_per_s"]
        r["entity_speedup"] = r["entities_per_s"] / ref["entities_per_s"]
    return rows
