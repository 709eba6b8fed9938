"""Training-step cost of each distillation preset on the embedded default (UMLS, MiniLM).

    python experiments/step_cost.py [--teacher EXPORT] [--layers 4] [--steps 8] [--presets none pmd makd pmd_makd]

Times `--steps` optimiser steps (after 2 warm-up steps) of one student stage outside Lightning:
student + teacher forward, the preset's terms, backward, AdamW step. Prints one JSON line per preset
with seconds per step and the ratio to CE-only training of the same student.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kgc_kd.chain.driver import build_datamodule
from kgc_kd.chain.stage_spec import objective_terms
from kgc_kd.config import load_config, to_plain
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.models.biencoder import BiEncoder, build_biencoder
from kgc_kd.models.plm import load_tokenizer
from kgc_kd.models.student import build_student


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", help="an exported stage to use as teacher (default: the untrained PLM)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--presets", nargs="+", default=["none", "pmd", "makd", "pmd_makd"])
    args = ap.parse_args()
    base = None
    for preset in args.presets:
        cfg = load_config([f"distill={preset}"])
        dm = build_datamodule(cfg, load_tokenizer(cfg.model.plm))
        teacher = BiEncoder.from_pretrained(args.teacher) if args.teacher else build_biencoder(to_plain(cfg.model))
        teacher.requires_grad_(False).eval()
        torch.manual_seed(0)
        student, layer_map = build_student(teacher, args.layers)
        # DistillModule takes resolved terms (as the run plan resolves a stage: kgc_kd.chain.stage_spec)
        stage = {"name": "bench", "layers": args.layers, "mask_rate": 0.1,
                 "terms": objective_terms(to_plain(cfg.distill))}
        module = DistillModule(to_plain(cfg.model), to_plain(cfg.optim), to_plain(cfg.eval), stage,
                               cfg.data.batch_size, student=student, teacher=teacher)
        module.mask_id = dm.tokens.mask_id
        params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        loader = iter(dm.train_dataloader())
        times = []
        for i in range(args.steps + 2):
            batch = next(loader)
            start = time.perf_counter()
            terms = module.distill_terms(batch)
            loss = sum(w * terms[n] for n, w in module.weights.items())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - start)
        s = sorted(times)[len(times) // 2]
        base = base or s
        print(json.dumps({"preset": preset, "student_layers": args.layers, "batch_size": cfg.data.batch_size,
                          "median_s_per_step": round(s, 3), "vs_first_preset": round(s / base, 2),
                          "terms": sorted(module.weights), "steps_timed": len(times)}), flush=True)


if __name__ == "__main__":
    main()
