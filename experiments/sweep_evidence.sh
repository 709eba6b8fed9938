#!/usr/bin/env bash
# Issue 20's evidence, rerunnable: a 16-trial TPE study over the KD settings on Nations with two workers, the
# cost of the same trials as independent `fit` runs (two measured, the rest extrapolated), then the best
# setting against the default (pmd) and `none` over 3 seeds. Tuned on Nations only. ~1 h on 2 CPU cores.
#   bash experiments/sweep_evidence.sh [ROOT]       (default ROOT: runs/evidence)
set -euo pipefail
root=${1:-runs/evidence}
items=(data=nations teacher.epochs=1 run.logger=csv trainer.enable_progress_bar=false)
mkdir -p "$root"
t0=$(date +%s)
python -m kgc_kd.sweep experiments/sweeps/kd_nations.yaml --trials 16 --workers 2 "${items[@]}" run.root="$root"
sweep_s=$(( $(date +%s) - t0 ))
echo "sweep_wall_s=$sweep_s" | tee "$root/sweep_wall.txt"

# Two trials as independent runs, each in a root of its own (no stage store to reuse: the teacher trains each time)
for i in 0 1; do
  params=$(python - "$root" "$i" <<'PY'
import json, sys
t = sorted(json.load(open(f"{sys.argv[1]}/sweeps/kd-nations/trials.json"))["trials"], key=lambda t: t["number"])[int(sys.argv[2])]
print(" ".join(f"{k}={v}" for k, v in t["params"].items()))
PY
)
  rm -rf "$root/alone-$i"
  t1=$(date +%s)
  # shellcheck disable=SC2086
  python -m kgc_kd.fit "${items[@]}" $params run.root="$root/alone-$i" run.name=alone > "$root/alone-$i.log" 2>&1
  echo "alone_${i}_s=$(( $(date +%s) - t1 )) params: $params" | tee -a "$root/sweep_wall.txt"
done
# The default setting at the sweep's seed, for its validation MRR (the teacher is reused from the sweep's store)
python -m kgc_kd.fit "${items[@]}" run.root="$root" run.name=default > "$root/default.log" 2>&1

best=$(python - "$root" <<'PY'
import json, sys
b = json.load(open(f"{sys.argv[1]}/sweeps/kd-nations/trials.json"))["best"]["params"]
print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.items()))
PY
)
echo "best: $best" | tee -a "$root/sweep_wall.txt"
python -m kgc_kd.compare --objectives none,pmd --variant "best=pmd $best" --seeds 3 --name sweep-best-nations \
  "${items[@]}" run.root="$root"
