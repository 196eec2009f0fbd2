#!/usr/bin/env bash
# Refresh the packaged Fashion-MNIST zoo from a main-job run (or one seed of `reproduce`): evaluate each of
# its models on N test examples with SUITE, publish the leaderboard entries and (re-)add the models to the
# zoo as fmnist-<method>.
#   model_zoo/refresh.sh RUN_DIR [N] [SUITE]      e.g. model_zoo/refresh.sh runs/table1/seed-0 1000 table1
# (`reproduce`'s table1 suite is the standard suite plus the paper's PGD-50; its evaluations are reused.)
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
  # a run of `reproduce` already evaluated its models (OUT/seed-<s>/results): reuse that evaluation when it
  # was made with the same suite on the same number of examples
  prev=$run/results/$m.json
  if [ ! -f "$res" ] && [ -f "$prev" ] && "$bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); \
      sys.exit(0 if (r['suite'], r['n_examples']) == (sys.argv[2], int(sys.argv[3])) else 1)" "$prev" "$suite" "$n"; then
    cp "$prev" "$res"
  fi
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
