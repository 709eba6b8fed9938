#!/usr/bin/env bash
# The serving evidence of docs/results.md#serving-the-default-chain and docs/performance.md#serving-measured:
# the default chain on UMLS and on Nations (the README's command, CSV logger), then the serving benchmark of
# each (every stage x every variant this machine serves, all cores). Run it on a quiet machine: latencies are
# wall-clock. ~35 min on this project's 2-core CPU. Finished stages are reused (the stage store), so a rerun only
# measures again.
set -euo pipefail
ROOT=${ROOT:-runs/evidence}
for data in umls nations; do
    args=(run.logger=csv "run.root=$ROOT" trainer.enable_progress_bar=false)
    [ "$data" = umls ] || args+=("data=$data")
    python -m kgc_kd.fit "${args[@]}" | tail -n 20
    run=$(ls -td "$ROOT/$data"-*/ | head -n 1)
    python -m kgc_kd.serve_bench "$run"
done
