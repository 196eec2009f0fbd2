#!/usr/bin/env bash
# Refresh the packaged Fashion-MNIST zoo from a main-job run (or one seed of `reproduce`): evaluate each of
# its models on N test examples with SUITE, publish the leaderboard entries and (re-)add the models to the
# zoo as fmnist-<method>.
#   model_zoo/refresh.sh RUN_DIR [N] [SUITE]      e.g. model_zoo/refresh.sh runs/table1/seed-0 1000 standard
# METHODS (environment) picks the models, default the paper's five. The description of each zoo model is
# written from its training config.json (arch, preset, epochs, training examples, eps, seed).
# Resumable: an evaluation that was interrupted continues from its state file.
set -euo pipefail
run=${1:?usage: model_zoo/refresh.sh RUN_DIR [N] [SUITE]}
n=${2:-1000}
suite=${3:-standard}
bin=${BIN:-.venv/bin}
methods=${METHODS:-at-dense at-sdense at-sparse at-moe advmoe}
out=$run/zoo-eval-$suite-$n
mkdir -p "$out"
for m in $methods; do
  ckpt=$run/models/$m/ckpt.pt
  res=$out/$m.json
  if [ ! -f "$res" ]; then
    resume=(); [ -d "$res.state" ] && resume=(--resume)
    "$bin/robustmoe-bench" evaluate "$ckpt" --suite "$suite" --n-examples "$n" --out "$res" "${resume[@]}"
  fi
  desc=$("$bin/python" - "$run/models/$m/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
moe = f" ({c['moe']} MoE, top-{c['k'] or 1} of {c['experts']} experts)" if c.get("moe") else ""
print(f"{c['arch']} {c['method']}{moe}, {c['preset']} preset ({c['epochs']} epochs, {c['subset']} training examples, "
      f"eps {c['eps_str']}, seed {c['seed']}), trained by robustmoe-bench")
PY
)
  preset=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['preset'])" "$run/models/$m/config.json")
  "$bin/robustmoe-bench" leaderboard publish "$res" --name "robustmoe-fmnist-$m" --force \
    --title "$m on fashion-mnist (robustmoe-bench, $preset preset)" --authors robustmoe-bench --venue robustmoe-bench
  "$bin/robustmoe-bench" zoo add "fmnist-$m" "$ckpt" --results "$res" --force \
    --leaderboard "leaderboards/fashion-mnist/Linf/robustmoe-fmnist-$m.json" --description "$desc"
done
"$bin/robustmoe-bench" leaderboard build
