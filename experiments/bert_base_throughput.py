"""Training examples/s of a bert-base-shaped bi-encoder on SimKGC's WN18RR recipe, data time included.

There are no bert-base weights on the GPU machine, and speed does not depend on the weights, so the encoder is
`BertModel(BertConfig(vocab_size=30522))` with random weights (seed 0): BertConfig's defaults are bert-base's
shape (12 layers, 768 wide, 12 heads, FFN 3072, 512 positions), the vocabulary is bert-base-uncased's 30,522
word-pieces, which all-MiniLM-L6-v2 uses too, so MiniLM's tokenizer (`--tokenizer`) tokenises the texts.
Everything else is the product's own path: the config is `conf/experiment/wn18rr_simkgc.yaml` (batch 1024,
max length 50, link-graph text, self-negatives, lr 5e-5, bf16-mixed on one GPU) with the items given on the
command line, the data module is `kgc_kd.chain.driver.build_datamodule` (the token table cached under `run.root`,
4 loader workers), the module is the teacher's `KGCModule`, the trainer gets `kgc_kd.chain.driver.trainer_kwargs`
(precision, gradient clipping) with validation off. `--encoders minilm` runs the same for the packaged
all-MiniLM-L6-v2 (its real weights, from `--tokenizer`'s directory), so both figures come from one card, one
method.

The figure: the wall time from the end of the last warm-up step to the end of the last step, which holds the
waiting for each batch (loader workers, collate, the host-to-device copy) and the steps themselves, and
examples/s = timed steps x batch / that time. The train-only rate (the same steps' training time, data waiting
left out, as PhaseTimer's `train` phase) is given beside it. Each step is bracketed by a CUDA synchronisation
(as PhaseTimer does in every run). Peak GPU memory is torch.cuda.max_memory_allocated over the encoder's
fit (reset before it). A run stops at `--steps` timed steps or at its share of `--deadline-s`, whichever comes
first, and says which; results so far are rewritten to `--out` every 10 steps, so a kill leaves them.

Usage (the GPU evidence script's `bert-base` step):
  python experiments/bert_base_throughput.py --data $WN18RR --tokenizer $MINILM --out throughput.json \
      [--encoders bert-base,minilm] [--steps 100] [--warmup 5] [--deadline-s 80] [--tiny] [key=value ...]
`--tiny` (the CPU dry run): a 2-layer, 64-wide bert instead of bert-base; the numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "conf" / "experiment" / "wn18rr_simkgc.yaml"
BERT_BASE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
VOCAB = 30522  # bert-base-uncased's word-pieces, all-MiniLM-L6-v2's too


def window_rate(starts: list[float], ends: list[float], batch: int, warmup: int) -> dict:
    """examples/s over the steps after `warmup`: data included (the wall time from the end of step warmup-1 to
    the end of the last step) and train only (the sum of those steps' own durations). `starts[i]`/`ends[i]`:
    when step i began (its batch in hand) and ended; `warmup` >= 1."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the window starts at the end of the last warm-up step")
    timed = len(ends) - warmup
    if timed < 1:
        return {"timed_steps": 0, "window_s": None, "examples_per_s": None, "train_examples_per_s": None,
                "data_wait_s": None, "train_s": None}
    window = ends[-1] - ends[warmup - 1]
    train = sum(e - s for s, e in zip(starts[warmup:], ends[warmup:]))
    return {"timed_steps": timed, "window_s": round(window, 4),
            "examples_per_s": round(timed * batch / window, 1) if window > 0 else None,
            "train_examples_per_s": round(timed * batch / train, 1) if train > 0 else None,
            "data_wait_s": round(window - train, 4), "train_s": round(train, 4)}


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="WN18RR in the KG-BERT layout")
    ap.add_argument("--tokenizer", required=True, help="all-MiniLM-L6-v2's directory (tokenizer; the minilm encoder)")
    ap.add_argument("--out", required=True, help="the JSON written (and rewritten every 10 steps)")
    ap.add_argument("--encoders", default="bert-base,minilm", help="comma-separated: bert-base, minilm (in order)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per encoder (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (CUDA kernels, allocator, workers)")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="seconds for the whole script: each encoder stops early at its share (bert-base 70%% of "
                         "what is left when minilm follows)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer 64-wide bert (CPU dry run)")
    ap.add_argument("--run-root", default="/tmp/gpu-evidence/runs",
                    help="run.root: where the token table is cached (shared with the WN18RR step)")
    ap.add_argument("items", nargs="*", help="more configuration items, e.g. data.batch_size=32")
    a = ap.parse_args(argv)
    t_script = time.perf_counter()

    import lightning as L
    import torch
    from transformers import BertConfig, BertModel

    from kgc_kd.chain.driver import build_datamodule, trainer_kwargs
    from kgc_kd.config import load_config, to_plain
    from kgc_kd.lit.kgc_module import KGCModule
    from kgc_kd.models.plm import load_tokenizer
    from kgc_kd.runtime.precision import configure_matmul, resolve_precision

    cfg = load_config([f"config={RECIPE}", f"data.source={a.data}", f"model.plm={a.tokenizer}",
                       f"run.root={a.run_root}", *a.items])
    precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    matmul = configure_matmul(cfg.trainer.accelerator)
    tokenizer = load_tokenizer(cfg.model.plm)
    t0 = time.perf_counter()
    dm = build_datamodule(cfg, tokenizer)
    data_setup_s = time.perf_counter() - t0
    cuda = torch.cuda.is_available() and str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda")
    result = {
        "what": "training examples/s, data time included, of the teacher step on the WN18RR SimKGC recipe",
        "recipe": str(RECIPE.relative_to(ROOT)), "items": a.items, "data": dm.kg.summary(),
        "train_examples_per_epoch": int(len(dm.train_examples)), "precision": precision, "precision_reason": why,
        "float32_matmul_precision": matmul, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "num_workers": int(cfg.data.num_workers), "warmup_steps": a.warmup,
        "steps_asked": a.steps, "tiny": a.tiny, "data_setup_s": round(data_setup_s, 2), "encoders": [],
    }
    out = Path(a.out)
    names = [n.strip() for n in a.encoders.split(",") if n.strip()]
    for i, name in enumerate(names):
        if name not in ("bert-base", "minilm"):
            raise SystemExit(f"--encoders: unknown {name!r} (bert-base, minilm)")
        stop_at = None
        if a.deadline_s is not None:
            left = a.deadline_s - (time.perf_counter() - t_script)
            stop_at = time.perf_counter() + (0.7 * left if i < len(names) - 1 else left - 3)
        row = _measure(name, a, cfg, dm, stop_at, result, out, L=L, torch=torch, BertConfig=BertConfig,
                       BertModel=BertModel, KGCModule=KGCModule, trainer_kwargs=trainer_kwargs, to_plain=to_plain,
                       cuda=cuda)
        result["encoders"].append(row)
        _write(out, result)
    result["script_s"] = round(time.perf_counter() - t_script, 1)
    _write(out, result)
    for r in result["encoders"]:
        print(f"{r['encoder']}: {r.get('examples_per_s')} examples/s (data included), "
              f"{r.get('train_examples_per_s')} train only, {r.get('timed_steps')} timed steps of batch "
              f"{r.get('batch_size')}, peak {r.get('peak_allocated_mib')} MiB allocated; {r.get('stopped_by')}"
              + (f"; {r['error']}" if r.get("error") else ""), flush=True)
    return 0 if all(r.get("examples_per_s") for r in result["encoders"]) else 1


def _measure(name, a, cfg, dm, stop_at, result, out, *, L, torch, BertConfig, BertModel, KGCModule,
             trainer_kwargs, to_plain, cuda) -> dict:
    batch = int(cfg.data.batch_size)
    row: dict = {"encoder": name, "batch_size": batch}
    starts: list[float] = []
    ends: list[float] = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            sync()
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            sync()
            ends.append(time.perf_counter())
            n = len(ends)
            if n >= a.warmup + a.steps:
                row["stopped_by"] = f"{a.steps} timed steps done"
                trainer.should_stop = True
            elif stop_at is not None and ends[-1] >= stop_at and n > a.warmup:
                row["stopped_by"] = "its share of --deadline-s"
                trainer.should_stop = True
            if n % 10 == 0:  # results so far survive a kill
                _write(out, {**result, "encoders": [*result["encoders"], {**row, **window_rate(starts, ends, batch, a.warmup), "partial": True}]})

    t0 = time.perf_counter()
    L.seed_everything(0, workers=True)
    if name == "bert-base":
        shape = TINY if a.tiny else BERT_BASE
        encoder = BertModel(BertConfig(vocab_size=VOCAB, **shape), add_pooling_layer=False)
        row.update(shape, vocab_size=VOCAB, weights="random (seed 0)")
    else:
        encoder = None  # model.plm: the MiniLM directory, its real weights
        row.update(weights=f"{cfg.model.plm} (all-MiniLM-L6-v2)")
    module = KGCModule(to_plain(cfg.model), to_plain(cfg.optim), to_plain(cfg.eval), batch, encoder=encoder)
    enc = module.net.query_encoder.config
    row.update(num_hidden_layers=enc.num_hidden_layers, hidden_size=enc.hidden_size,
               params_total=sum(p.numel() for p in module.net.parameters()), build_s=round(time.perf_counter() - t0, 2))
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(**trainer_kwargs(cfg, max_steps=a.warmup + a.steps, limit_val_batches=0, num_sanity_val_steps=0,
                                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                         enable_model_summary=False, callbacks=[Clock()]))
    t_fit = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no validation loop", "few workers": expected here
            trainer.fit(module, datamodule=dm)
    except torch.cuda.OutOfMemoryError as err:  # the figure is then "does not fit at this batch on this card"
        row["error"] = f"CUDA out of memory at batch {batch}: {str(err).splitlines()[0][:200]}"
    except Exception as err:  # recorded; the next encoder still runs
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    row["fit_s"] = round(time.perf_counter() - t_fit, 2)
    row["first_step_s"] = round(ends[0] - t_fit, 2) if ends else None  # trainer setup, workers, first kernels
    row.setdefault("stopped_by", "the run ended" if not row.get("error") else "an error")
    row.update(window_rate(starts, ends, batch, a.warmup), steps_run=len(ends))
    if cuda:
        row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
        row["peak_memory_from"] = "torch.cuda.max_memory_allocated / max_memory_reserved over this encoder's fit"
    else:
        row["peak_allocated_mib"] = None
        row["peak_memory_from"] = "no CUDA device"
    del trainer, module, encoder
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # kgc_kd from this checkout when it is not installed (the GPU machine)
    raise SystemExit(main())
