#!/usr/bin/env bash
# Refresh the packaged Fashion-MNIST zoo from a main-job run: evaluate each of its five models on N test
# examples with SUITE, publish the leaderboard entries and (re-)add the models to the zoo.
#   model_zoo/refresh.sh RUN_DIR [N] [SUITE]      e.g. model_zoo/refresh.sh runs/fmnist-demo 1000 standard
# Resumable: an evaluation that was interrupted continues from its state file.
set -euo pipefail
run=${1:?usage: model_zoo/refresh.sh RUN_DIR [N] [SUITE]}
n=${2:-1000}
suite=${3:-standard}
bin=${BIN:-.venv/bin}
out=$run/zoo-eval
mkdir -p "$out"
for m in at-dense at-sdense at-sparse at-moe advmoe; do
  ckpt=$run/models/$m/ckpt.pt
  res=$out/$m.json
  if [ ! -f "$res" ]; then
    resume=(); [ -f "$res.state" ] && resume=(--resume)
    "$bin/robustmoe-bench" evaluate "$ckpt" --suite "$suite" --n-examples "$n" --out "$res" "${resume[@]}"
  fi
  "$bin/robustmoe-bench" leaderboard publish "$res" --name "robustmoe-fmnist-$m" --force \
    --title "$m on fashion-mnist (robustmoe-bench, fmnist-mini preset)" --authors robustmoe-bench --venue robustmoe-bench
  "$bin/robustmoe-bench" zoo add "fmnist-$m" "$ckpt" --results "$res" --force \
    --leaderboard "leaderboards/fashion-mnist/Linf/robustmoe-fmnist-$m.json" \
    --description "resnet-mini $m, fmnist-mini preset (3 epochs, 10k examples, eps 0.1), trained by robustmoe-bench"
done
"$bin/robustmoe-bench" leaderboard build
