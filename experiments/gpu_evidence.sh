#!/usr/bin/env bash
# GPU evidence in one device call, sized to the device tool (15 minutes of device time per session, machine start
# included; at most 600 s per call; at most 8 files come back from $OUT, none deeper than $OUT/a/b/file).
# How to run it and what each figure means: experiments/gpu_evidence.md and docs/gpu.md.
#
#   source .gpu/setup.sh && bash experiments/gpu_evidence.sh                  (on the device; the tool sets $OUT)
#   GPU_EVIDENCE_DRY=1 OUT=/tmp/gpu-evidence-test MINILM=... WN18RR=... bash experiments/gpu_evidence.sh   (CPU)
#
# Steps, in this order, each under its own `timeout` (its cap, cut to what is left of GPU_EVIDENCE_BUDGET):
#   device     nvidia-smi; torch/CUDA/cuDNN; every dependency's version against pyproject.toml's range
#   canary     the default chain, ONE training batch per stage, default trainer (bf16-mixed, clipping, fused
#              AdamW on the GPU): if it fails, the chain steps are skipped and its log is the evidence
#   wn18rr     conf/experiment/wn18rr_simkgc.yaml (batch 1024, bf16): MiniLM teacher 1 epoch + a 3-layer student
#   test-gpu   pytest -m "gpu and not slow"  (per-test timeout when pytest-timeout is importable; junit XML)
#   test-gpu-slow  pytest -m "gpu and slow"  (idem)
#   bert-base  experiments/bert_base_throughput.py: random-init bert-base shape and MiniLM, batch 1024, bf16,
#              training examples/s with data time included
#   umls-full  the default chain in full
# Outside the step budget (a few seconds each): after every step its results are collected (a step cut by its
# timeout included: its partial files are kept), the summary rewritten and the tarball rebuilt, so a call killed
# from outside still brings back what was done. $OUT ends with exactly: summary.md, summary.json, steps.tsv,
# progress.log, evidence.tar.gz (every log, junit XML, run report, metrics.csv, nvidia-smi samples, peak memory).
#
# Environment: OUT (required), MINILM (encoder directory; setup.sh sets /tmp/minilm), WN18RR (KG-BERT layout;
# setup.sh sets /tmp/wn18rr), GPU_EVIDENCE_BUDGET (seconds for the steps; default 400: with setup.sh and the
# collection the call takes ~7.5 min, which leaves a 15-minute session room for a machine start and one targeted
# rerun; 1500 dry), GPU_EVIDENCE_STEPS (a comma-separated subset of the step names above; default all),
# GPU_EVIDENCE_DRY=1 (a CPU exercise: every step shrunk, a WN18RR subset, a tiny bert; numbers meaningless),
# PYTHON (default python3), GPU_EVIDENCE_WORK (scratch folder, default /tmp/gpu-evidence; removed at the start and
# the end). Writes only under $OUT and GPU_EVIDENCE_WORK.
set -u
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.." || exit 2
PY=${PYTHON:-python3}
WORK=${GPU_EVIDENCE_WORK:-/tmp/gpu-evidence}
EV=$WORK/evidence        # what goes into evidence.tar.gz
RUNS=$WORK/runs          # run.root of every chain run (checkpoints stay here and are deleted)
DRY_WN=$WORK/wn18rr-dry

# ---- sub-commands: each runs as `bash $SELF __name` so that `timeout` can kill it as a whole -----------------
case "${1:-}" in
__wn18rr_subset)  # dry run only: a few thousand entities of WN18RR in the same KG-BERT layout, same text
    exec "$PY" - "$WN18RR" "$DRY_WN" <<'PY'
import pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
dst.mkdir(parents=True)
def rows(name): return [l.split("\t") for l in (src / name).read_text().splitlines() if l.strip()]
train, dev, test = rows("train.tsv")[:1500], rows("dev.tsv")[:100], rows("test.tsv")[:100]
keep = {e for t in train + dev + test for e in (t[0], t[2])}
for name, part in (("train.tsv", train), ("dev.tsv", dev), ("test.tsv", test)):
    (dst / name).write_text("".join("\t".join(t) + "\n" for t in part))
(dst / "entities.txt").write_text("".join(e + "\n" for e in sorted(keep)))
(dst / "entity2text.txt").write_text("".join("\t".join(r) + "\n" for r in rows("entity2text.txt") if r[0] in keep))
for name in ("relations.txt", "relation2text.txt"):
    shutil.copy(src / name, dst / name)
print(f"{dst}: {len(keep)} entities, {len(train)}/{len(dev)}/{len(test)} train/dev/test triples (dry run subset)")
PY
    ;;
__*) echo "unknown sub-command $1"; exit 2 ;;
esac

# ---- set-up ---------------------------------------------------------------------------------------------------
: "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
if [ -e "$WORK" ] && [ ! -f "$WORK/.gpu-evidence-work" ]; then
    echo "GPU_EVIDENCE_WORK=$WORK exists and is not this script's scratch folder (no .gpu-evidence-work in it): not touching it" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
DRY=${GPU_EVIDENCE_DRY:-0}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_EVIDENCE_BUDGET:-1500}; else BUDGET=${GPU_EVIDENCE_BUDGET:-400}; fi
START=$(date +%s)
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
rm -rf "$WORK" && mkdir -p "$EV" "$RUNS" && touch "$WORK/.gpu-evidence-work" || exit 2
rm -f "$OUT/summary.md" "$OUT/summary.json" "$OUT/steps.tsv" "$OUT/progress.log" "$OUT/evidence.tar.gz"
[ "$DRY" = 1 ] && echo "GPU_EVIDENCE_DRY=1: a CPU exercise of the script; no number means anything" > "$EV/DRY_RUN"
printf 'step\trc\tseconds\ttimeout_s\tstart_unix\tend_unix\tnote\n' > "$OUT/steps.tsv"
if [ -z "${MINILM:-}" ]; then MINILM=minilm; fi  # without setup.sh: the installed package
export KGC_KD_GPU_PLM=$MINILM                       # the encoder of tests/test_gpu.py's chain test

log() { echo "[gpu-evidence $(date -u +%H:%M:%S), $(( $(date +%s) - START )) s] $*" | tee -a "$OUT/progress.log"; }
want() { case ",${GPU_EVIDENCE_STEPS:-device,canary,wn18rr,test-gpu,test-gpu-slow,bert-base,umls-full}," in
         *",$1,"*) return 0 ;; esac; return 1; }
[ "$DRY" = 1 ] && log "DRY RUN: every step shrunk; the numbers mean nothing"
log "budget ${BUDGET} s for the steps; MINILM=$MINILM WN18RR=${WN18RR:-unset}"

# nvidia-smi once a second for the whole script (epoch seconds first, so the summary can cut it per step)
SAMPLER=
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "unix_s,gpu_index,utilization_gpu_pct,utilization_memory_pct,memory_used_mib,memory_total_mib,power_w" > "$EV/nvidia-smi.csv"
    ( while :; do
        nvidia-smi --query-gpu=index,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw \
            --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$(date +%s.%N | cut -c1-14),/; s/, /,/g"
        sleep 1
      done ) >> "$EV/nvidia-smi.csv" &
    SAMPLER=$!
fi

# After every step, outside the budget: its run's small files, the summary, the tarball (atomically replaced).
collect_run() {  # $1: a run name under $RUNS; copies reports, state, config and metrics.csv (no checkpoints)
    local src=$RUNS/$1 dst=$EV/runs/$1 f
    [ -d "$src" ] || return 0
    mkdir -p "$dst"
    for f in report.json report.md config.yaml chain_state.json; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/"; done
    (cd "$src" && find -L . -name metrics.csv 2>/dev/null) |
        while read -r f; do mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"; done
}
publish() {  # the summary and the tarball from what $EV holds now
    cp "$OUT/steps.tsv" "$EV/steps.tsv"
    timeout -k 5 30 "$PY" experiments/gpu_evidence_summary.py "$EV" "$OUT" > "$EV/summary.log" 2>&1 ||
        log "summary failed: $(tail -n 1 "$EV/summary.log")"
    cp "$OUT/progress.log" "$EV/progress.log" 2>/dev/null
    tar -C "$WORK" -czf "$WORK/evidence.tar.gz.tmp" evidence && mv "$WORK/evidence.tar.gz.tmp" "$OUT/evidence.tar.gz"
}

# step NAME CAP -- COMMAND...: COMMAND under `timeout` (CAP cut to the budget left) wrapped by gpu_evidence_peak.py
# when it is Python (CUDA peak memory to $EV/NAME.peak.json); output in $EV/NAME.log; one line in steps.tsv.
LAST_RC=0
step() {
    local name=$1 cap=$2; shift 3
    local left t t0 t1 rc note
    left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        printf '%s\tskipped\t\t0\t\t\tno budget left (GPU_EVIDENCE_BUDGET=%s)\n' "$name" "$BUDGET" >> "$OUT/steps.tsv"
        log "$name: skipped, no budget left"; LAST_RC=skipped; return 0
    fi
    t=$(( cap < left ? cap : left ))
    if [ "$1" = "$PY" ]; then shift; set -- "$PY" experiments/gpu_evidence_peak.py "$EV/$name.peak.json" "$@"; fi
    log "$name: start (timeout ${t} s): $*"
    t0=$(date +%s.%N)
    timeout -k 10 "$t" "$@" > "$EV/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) note="ok" ;;
        124|137) note="timed out after ${t} s (partial results kept)" ;;
        5) note="no test selected" ;;
        *) note="failed: $(grep -v '^\s*$' "$EV/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200)" ;;
    esac
    awk -v n="$name" -v rc="$rc" -v t="$t" -v a="$t0" -v b="$t1" -v note="$note" \
        'BEGIN { printf "%s\t%s\t%.1f\t%s\t%.1f\t%.1f\t%s\n", n, rc, b - a, t, a, b, note }' >> "$OUT/steps.tsv"
    log "$name: exit status $rc ($note)"
    LAST_RC=$rc
    return 0
}
skip() { printf '%s\tskipped\t\t0\t\t\t%s\n' "$1" "$2" >> "$OUT/steps.tsv"; log "$1: skipped: $2"; }

FIT=("$PY" -m kgc_kd.fit run.logger=csv "run.root=$RUNS" trainer.enable_progress_bar=false)
PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider --continue-on-collection-errors)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    PT_FAST=(--timeout=90); PT_SLOW=(--timeout=150)  # the plugin loads itself (entry point)
else
    PT_FAST=(); PT_SLOW=(); log "pytest-timeout is not importable: no per-test timeout (gpu-pack pytest-timeout==2.4.0 packs it)"
fi
# caps (s): device canary wn18rr test-gpu test-gpu-slow bert-base umls-full
if [ "$DRY" = 1 ]; then
    C=(30 150 240 240 240 120 240); ONE=(trainer.limit_val_batches=2 eval.val_max_queries=32)
    FULL=(trainer.limit_train_batches=3 trainer.limit_val_batches=2 teacher.epochs=1)
    BERT=(--tiny --steps 3 --warmup 1 data.batch_size=32 data.num_workers=0 trainer.accelerator=auto trainer.precision=null)
else
    C=(20 60 150 120 90 90 120); ONE=(); FULL=(); BERT=()
fi

# 1. the device --------------------------------------------------------------------------------------------------
if want device; then
    step device "${C[0]}" -- bash -c "{ nvidia-smi || echo 'nvidia-smi: not found (no NVIDIA driver)'; echo; } && \
        exec $PY experiments/gpu_evidence_device.py $EV/device.json"
    publish
fi

# 2. the canary: the chain's own Trainer, one optimizer step per stage, as a GPU run configures it ----------------
CANARY_OK=1
if want canary; then
    step canary "${C[1]}" -- "${FIT[@]}" run.name=canary trainer.limit_train_batches=1 teacher.epochs=1 \
        eval.untrained_baseline=false ${ONE[@]+"${ONE[@]}"} "model.plm=$MINILM"
    [ "$LAST_RC" = 0 ] || CANARY_OK=0
    collect_run canary; publish
fi
chain_step() {  # the chain steps wait for a canary that passed
    if [ "$CANARY_OK" = 1 ]; then return 0; fi
    skip "$1" "the canary failed: one optimizer step of the default chain does not run here (see canary.log)"
    return 1
}

# 3. WN18RR, SimKGC's recipe (link-graph text, re-rank, batch 1024, bf16) with MiniLM: teacher 1 epoch, 3-layer student
if want wn18rr && chain_step wn18rr; then
    if [ -z "${WN18RR:-}" ] || [ ! -d "${WN18RR:-/nonexistent}" ]; then
        skip wn18rr "WN18RR is not set or not a directory (source .gpu/setup.sh sets /tmp/wn18rr)"
    else
        WN_DATA=$WN18RR
        if [ "$DRY" = 1 ]; then
            WN18RR=$WN18RR DRY_WN=$DRY_WN PY=$PY bash "$SELF" __wn18rr_subset > "$EV/wn18rr-subset.log" 2>&1
            WN_DATA=$DRY_WN
        fi
        WN=(config=conf/experiment/wn18rr_simkgc.yaml "data.source=$WN_DATA" teacher.only=false teacher.epochs=1
            trainer.max_epochs=1 "stages=[{name: s3, layers: 3, epochs: 1}]")
        [ "$DRY" = 1 ] && WN+=(data.batch_size=32 data.eval_batch_size=128 data.num_workers=0
            trainer.limit_train_batches=2 trainer.limit_val_batches=2 eval.val_max_queries=64
            trainer.accelerator=auto trainer.precision=null)
        # model.plm last: the preset says `model.plm: ???`
        step wn18rr "${C[2]}" -- "${FIT[@]}" run.name=wn18rr "${WN[@]}" "model.plm=$MINILM"
        collect_run wn18rr; publish
    fi
fi

# 4. the CUDA test suite, fast then slow (tests marked gpu skip with their reason without a CUDA device) ---------
if want test-gpu; then
    step test-gpu "${C[3]}" -- "${PYTEST[@]}" -m "gpu and not slow" ${PT_FAST[@]+"${PT_FAST[@]}"} \
        --junitxml="$EV/test-gpu.xml"
    publish
fi
if want test-gpu-slow; then
    step test-gpu-slow "${C[4]}" -- "${PYTEST[@]}" -m "gpu and slow" ${PT_SLOW[@]+"${PT_SLOW[@]}"} \
        --junitxml="$EV/test-gpu-slow.xml"
    publish
fi

# 5. bert-base-shaped throughput beside MiniLM (the figure comparable with SimKGC's setting) ---------------------
if want bert-base && chain_step bert-base; then
    if [ -z "${WN18RR:-}" ] || [ ! -d "${WN18RR:-/nonexistent}" ]; then
        skip bert-base "WN18RR is not set or not a directory"
    else
        left=$(( BUDGET - ($(date +%s) - START) )); cap=$(( C[5] < left ? C[5] : left ))
        step bert-base "${C[5]}" -- "$PY" experiments/bert_base_throughput.py --data "${WN_DATA:-$WN18RR}" \
            --tokenizer "$MINILM" --out "$EV/throughput.json" --deadline-s $(( cap > 20 ? cap - 10 : 10 )) \
            --run-root "$RUNS/throughput" ${BERT[@]+"${BERT[@]}"}
        publish
    fi
fi

# 6. the rest: the default chain in full -------------------------------------------------------------------------
if want umls-full && chain_step umls-full; then
    step umls-full "${C[6]}" -- "${FIT[@]}" run.name=umls-full ${FULL[@]+"${FULL[@]}"} "model.plm=$MINILM"
    collect_run umls-full; publish
fi

# ---- done: stop the sampler, the final summary and tarball, nothing heavy left behind -------------------------
if [ -n "$SAMPLER" ]; then pkill -P "$SAMPLER" 2>/dev/null; kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; fi
log "done: steps took $(( $(date +%s) - START )) s of a ${BUDGET} s budget"
publish
rm -rf "$WORK"
log "$(ls "$OUT" | wc -l) files, $(du -sh "$OUT" | cut -f1) in $OUT"
cat "$OUT/steps.tsv"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
exit 0
