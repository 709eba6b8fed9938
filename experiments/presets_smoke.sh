#!/usr/bin/env bash
# Every preset in conf/distill/ on the default chain with two training batches per stage: each must run and
# record its resolved spec (the terms of every student stage) in report.json. ~80 s per preset on 2 CPU cores.
#   bash experiments/presets_smoke.sh [ROOT]      (default ROOT: runs/presets-smoke; one run per preset)
set -euo pipefail
root=${1:-runs/presets-smoke}
rm -rf "$root"
for f in conf/distill/*.yaml; do
  p=$(basename "$f" .yaml)
  start=$(date +%s)
  python -m kgc_kd.fit "distill=$p" trainer.limit_train_batches=2 run.root="$root" run.name="$p" run.logger=csv \
    trainer.enable_progress_bar=false > "$root.$p.log" 2>&1 || { echo "$p: FAILED (log: $root.$p.log)"; exit 1; }
  python - "$root/$p/report.json" "$p" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
report, preset, secs = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
students = [r for r in report["stages"] if r.get("kind") == "student"]
assert students and all(r.get("terms") for r in students), f"{preset}: a student stage has no resolved terms"
spec = "; ".join(r["name"] + ": " + " + ".join(f"{t['weight']:g} {t['name']}" for t in r["terms"]) for r in students)
mrr = " ".join(f"{r['name']} {r['test']['mrr']:.4f}" for r in report["stages"])
print(f"{preset}: ok in {secs} s | {spec} | test MRR {mrr}")
PY
done
