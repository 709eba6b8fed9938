#!/usr/bin/env bash
# GPU evidence in one device call: what the device is, the CUDA test suite, the default chain (UMLS) with two
# batches per stage and in full, and the WN18RR SimKGC teacher (1 epoch) plus one 3-layer student (1 epoch),
# each stage's test MRR, train/eval seconds and training examples/s. How to run it: experiments/gpu_evidence.md.
#
#   source .gpu/setup.sh && OUT=$OUT bash experiments/gpu_evidence.sh      (on the device; $OUT comes back)
#   GPU_EVIDENCE_DRY=1 OUT=/tmp/gpu-evidence-test MINILM=... WN18RR=... bash experiments/gpu_evidence.sh   (CPU)
#
# Environment: OUT (required; everything that should come back goes there, small: no checkpoints),
# MINILM (encoder directory; setup.sh sets /tmp/minilm), WN18RR (KG-BERT layout; setup.sh sets /tmp/wn18rr),
# GPU_EVIDENCE_DRY=1 (a CPU exercise: a couple of batches per step, a WN18RR subset; numbers meaningless),
# GPU_EVIDENCE_BUDGET (seconds for the whole script; default 520 so that it and setup.sh fit the device tool's
# 600 s per call; 1200 dry), PYTHON (default python3), GPU_EVIDENCE_KEEP_RUNS=1 (keep the run directories),
# GPU_EVIDENCE_STEPS=device,wn18rr (only those steps; default all: device,test-gpu,umls-smoke,umls-full,wn18rr).
# A step that fails or times out is recorded in $OUT/steps.tsv and the next one still runs; every step runs
# under its own `timeout`, cut to what is left of the budget; the summary always gets its reserve.
# Deletes nothing outside $OUT and /tmp: the runs go to /tmp/gpu-evidence-runs and only their reports are copied.
set -u
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.." || exit 2
PY=${PYTHON:-python3}
RUNS=/tmp/gpu-evidence-runs
DRY_WN=/tmp/gpu-evidence-wn18rr-dry

# ---- sub-commands: each step runs as `timeout N bash $SELF __name` so that it can be killed as a whole --------
case "${1:-}" in
__device)
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not found (no NVIDIA driver on this machine)"; fi
    echo; echo "== torch"
    exec "$PY" - "$OUT/device.json" <<'PY'
import json, platform, sys
info = {"python": platform.python_version(), "machine": platform.machine()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None, device_name=None)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
except Exception as err:  # recorded, not fatal: the other steps say the rest
    info["torch_error"] = repr(err)
for mod in ("lightning", "transformers", "torchmetrics", "omegaconf", "tokenizers"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as err:
        info[mod] = f"not importable: {err!r}"
json.dump(info, open(sys.argv[1], "w"), indent=2)
for k, v in info.items():
    print(f"{k}: {v}")
if not info.get("cuda_available"):
    print("no CUDA device: the GPU steps below run on the CPU or are skipped")
PY
    ;;
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
__collect)  # the small files of run $2 into $OUT/runs/$2 (no checkpoints, exports or predictions)
    src=$RUNS/$2; dst=$OUT/runs/$2
    [ -d "$src" ] || { echo "no run directory $src"; exit 1; }
    mkdir -p "$dst"
    for f in report.json report.md config.yaml chain_state.json; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/"; done
    (cd "$src" && find stages -path '*/logs/*' -name metrics.csv 2>/dev/null) | while read -r f; do
        mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"; done
    ls -R "$dst"
    exit 0
    ;;
__*) echo "unknown sub-command $1"; exit 2 ;;
esac

# ---- the steps ------------------------------------------------------------------------------------------------
: "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
export OUT PY RUNS DRY_WN
DRY=${GPU_EVIDENCE_DRY:-0}
if [ "$DRY" = 1 ]; then BUDGET=${GPU_EVIDENCE_BUDGET:-1200}; else BUDGET=${GPU_EVIDENCE_BUDGET:-520}; fi
RESERVE=40  # seconds kept for the summary
START=$(date +%s)
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
rm -f "$OUT/DRY_RUN"; [ "$DRY" = 1 ] && echo "GPU_EVIDENCE_DRY=1: a CPU exercise of the script, numbers meaningless" > "$OUT/DRY_RUN"
printf 'step\trc\tseconds\ttimeout_s\tnote\n' > "$OUT/steps.tsv"
rm -rf "$RUNS" "$OUT/runs"; mkdir -p "$RUNS"

if [ -z "${MINILM:-}" ]; then
    echo "MINILM is not set (source .gpu/setup.sh sets /tmp/minilm): using model.plm=minilm, the installed package"
    MINILM=minilm
fi
export KGC_KD_GPU_PLM=$MINILM  # the GPU tests' encoder

log() { echo "[gpu-evidence $(date -u +%H:%M:%S), $(( $(date +%s) - START )) s] $*" | tee -a "$OUT/progress.log"; }

# step NAME CAP NOTE_FOR_RC5 -- COMMAND...: run COMMAND under timeout (CAP, cut to the budget left), output to
# $OUT/NAME.log, one line in steps.tsv. Never aborts the script.
step() {
    local name=$1 cap=$2 rc5=$3; shift 4
    local left t t0 t1 rc secs note
    left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
    if [ "$left" -lt 20 ]; then
        printf '%s\tskipped\t\t0\tno budget left (GPU_EVIDENCE_BUDGET=%s)\n' "$name" "$BUDGET" >> "$OUT/steps.tsv"
        log "$name: skipped, no budget left"; return 0
    fi
    t=$(( cap < left ? cap : left ))
    log "$name: start (timeout ${t} s): $*"
    t0=$(date +%s.%N)
    timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) note="ok" ;;
        124|137) note="timed out after ${t} s" ;;
        127) note="command not found" ;;
        5) note=${rc5:-"exit status 5"} ;;
        *) note="failed: $(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200)" ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$t" "$note" >> "$OUT/steps.tsv"
    log "$name: exit status $rc after $secs s ($note)"
    return 0
}

collect() { [ -d "$RUNS/$1" ] && step "collect-$1" 30 "" -- bash "$SELF" __collect "$1"; }
# GPU_EVIDENCE_STEPS: a comma-separated subset of device,test-gpu,umls-smoke,umls-full,wn18rr (default: all)
want() { case ",${GPU_EVIDENCE_STEPS:-device,test-gpu,umls-smoke,umls-full,wn18rr}," in *",$1,"*) return 0 ;; esac; return 1; }

# model.plm comes last in every command: a config= file that says `model.plm: ???` (the WN18RR preset) would
# otherwise undo it
FIT=("$PY" -m kgc_kd.fit run.logger=csv "run.root=$RUNS" trainer.enable_progress_bar=false)
if [ "$DRY" = 1 ]; then
    C=(30 240 240 240 420); SMOKE=(trainer.limit_train_batches=2 trainer.limit_val_batches=2)
    FULL=(trainer.limit_train_batches=3 trainer.limit_val_batches=2 teacher.epochs=1)
    log "DRY RUN: every step shrunk; the numbers mean nothing"
else
    C=(30 180 60 120 240); SMOKE=(trainer.limit_train_batches=2); FULL=()
fi

# 1. the device
want device && step device "${C[0]}" "" -- bash "$SELF" __device
[ -f "$OUT/device.log" ] && mv "$OUT/device.log" "$OUT/device.txt"

# 2. the CUDA test suite (tests marked gpu skip with a reason without a CUDA device)
want test-gpu && step test-gpu "${C[1]}" "no test selected: no test is marked gpu in this checkout" -- \
    "$PY" -m pytest -q -m gpu -ra -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUT/test-gpu.xml"

# 3. the default chain (bundled UMLS, default trainer: the GPU when there is one), two batches per stage, then in full
if want umls-smoke; then
    step umls-smoke "${C[2]}" "" -- "${FIT[@]}" run.name=umls-smoke "${SMOKE[@]}" "model.plm=$MINILM"
    collect umls-smoke
fi
if want umls-full; then
    step umls-full "${C[3]}" "" -- "${FIT[@]}" run.name=umls-full ${FULL[@]+"${FULL[@]}"} "model.plm=$MINILM"
    collect umls-full
fi

# 4. WN18RR: the SimKGC preset (link-graph text, re-rank, batch 1024, bf16 on one GPU) with all-MiniLM-L6-v2 instead
#    of bert-base (no bert-base weights on the device), teacher 1 epoch, then one 3-layer student for 1 epoch
if ! want wn18rr; then
    :
elif [ -z "${WN18RR:-}" ] || [ ! -d "${WN18RR:-/nonexistent}" ]; then
    printf 'wn18rr\tskipped\t\t0\tWN18RR is not set or not a directory (source .gpu/setup.sh sets /tmp/wn18rr)\n' >> "$OUT/steps.tsv"
    log "wn18rr: skipped: WN18RR=${WN18RR:-} is not a directory"
else
    log "wn18rr: model.plm=$MINILM (all-MiniLM-L6-v2), NOT bert-base-uncased as in SimKGC: no bert-base weights here"
    WN=(config=conf/experiment/wn18rr_simkgc.yaml "data.source=$WN18RR" teacher.only=false teacher.epochs=1
        trainer.max_epochs=1 "stages=[{name: s3, layers: 3, epochs: 1}]")
    if [ "$DRY" = 1 ]; then
        export WN18RR
        step wn18rr-subset 60 "" -- bash "$SELF" __wn18rr_subset
        WN+=("data.source=$DRY_WN" data.batch_size=32 data.eval_batch_size=128 data.num_workers=0
             trainer.limit_train_batches=2 trainer.limit_val_batches=2 eval.val_max_queries=64
             trainer.accelerator=auto trainer.precision=null)
    fi
    step wn18rr "${C[4]}" "" -- "${FIT[@]}" run.name=wn18rr "${WN[@]}" "model.plm=$MINILM"
    collect wn18rr
fi

# 5. the summary, then nothing heavy left behind
# (outside the budget check: it always runs, in the reserve kept for it)
log "summary: start (timeout 40 s)"
timeout -k 5 40 "$PY" experiments/gpu_evidence_summary.py "$OUT" > "$OUT/summary.log" 2>&1
rc=$?; printf 'summary\t%s\t\t40\t%s\n' "$rc" "$([ $rc = 0 ] && echo ok || tail -n 1 "$OUT/summary.log" | tr '\t' ' ')" >> "$OUT/steps.tsv"
find "$OUT" -name '*.ckpt' -delete
if [ "${GPU_EVIDENCE_KEEP_RUNS:-0}" != 1 ]; then rm -rf "$RUNS"; fi
[ "$DRY" = 1 ] && rm -rf "$DRY_WN"
log "done in $(( $(date +%s) - START )) s; $(du -sh "$OUT" | cut -f1) in $OUT"
cat "$OUT/steps.tsv"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
exit 0
