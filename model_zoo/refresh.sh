#!/usr/bin/env bash
# Refresh the packaged Fashion-MNIST zoo from a main-job run (or one seed of `reproduce`), or from a `sweep`
# of top-k designs: evaluate each of its models on N test examples with SUITE, publish the leaderboard
# entries and (re-)add the models to the zoo.
#   model_zoo/refresh.sh RUN_DIR [N] [SUITE]      e.g. model_zoo/refresh.sh runs/table1/seed-0 1000 table1
#   model_zoo/refresh.sh SWEEP_DIR [N] [SUITE]    e.g. model_zoo/refresh.sh benchmarks/results/topk-designs 1000 full
# A run folder's models (RUN_DIR/models/<m>) become fmnist-<m>; METHODS (environment) picks them, default
# the paper's five. A sweep folder's cells (SWEEP_DIR/cells/<cell>, e.g. conv_N4_k2) become
# fmnist-<method>-<cell> in lower case with "_" written as "-"; CELLS (environment) picks them, default every cell.
# Evaluations already made with the same suite on the same number of examples are reused (`reproduce`'s
# OUT/seed-<s>/results/<m>.json, a sweep's cells/<cell>/eval.json). CORRUPTIONS=1 (environment) also
# evaluates the 15 x 5 common corruptions on the same N examples and adds corruptions_acc to each entry.
# The description of each zoo model is written from its training config.json (arch, preset, epochs,
# training examples, eps, seed). Resumable: an interrupted evaluation continues from its state file.
# N: the default 1000 is the most this 2-core machine's time allows per refresh: the table1 suite costs it
# 0.6-2.4 s per example (the re-run mini Table 1), so N = 10000 would be 2-7 hours per model and 2-3 days for the
# zoo (benchmarks/RESULTS.md, "Scale"). On a GPU machine pass 10000.
set -euo pipefail
run=${1:?usage: model_zoo/refresh.sh RUN_DIR [N] [SUITE]}
n=${2:-1000}
suite=${3:-standard}
bin=${BIN:-.venv/bin}
out=$run/zoo-eval-$suite-$n
mkdir -p "$out"

# reuse PREV as RES when it was made with SUITE on N examples
reuse() {
  local prev=$1 res=$2
  if [ ! -f "$res" ] && [ -f "$prev" ] && "$bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); \
      sys.exit(0 if (r['suite'], r['n_examples']) == (sys.argv[2], int(sys.argv[3])) else 1)" "$prev" "$suite" "$n"; then
    cp "$prev" "$res"
  fi
}

# evaluate CKPT into RES with SUITE (resuming an interrupted evaluation)
evaluate() {
  local ckpt=$1 res=$2 s=$3
  if [ ! -f "$res" ]; then
    local resume=(); [ -d "$res.state" ] && resume=(--resume)
    "$bin/robustmoe-bench" evaluate "$ckpt" --suite "$s" --n-examples "$n" --out "$res" "${resume[@]}"
  fi
}

# results written before evaluations recorded the routing health lack "expert_use": measure it on the very
# examples RES was evaluated on (same n, subset seed and indices digest; one clean forward each) and add it to
# this folder's copy RES, so that the zoo and the leaderboard show it; the original results stay as they were
record_use() {
  "$bin/python" - "$1" "$2" <<'PY'
import hashlib, json, sys
from pathlib import Path
from robustmoe_bench.checkpoint import atomic_write_bytes
from robustmoe_bench.data import load_dataset, subset_indices
from robustmoe_bench.reproduce import expert_use
res, ckpt = Path(sys.argv[1]), sys.argv[2]
r = json.loads(res.read_text())
if "expert_use" in r:
    sys.exit(0)
n_total = len(load_dataset(r["dataset"], "test", None))
idx = subset_indices(n_total, r["n_examples"], r["seed"])
want = (r.get("examples") or {}).get("indices_sha256")
if want and hashlib.sha256(idx.numpy().tobytes()).hexdigest() != want:
    sys.exit(f"error: {res}: its evaluated examples cannot be re-derived (indices digest differs); expert use not recorded")
r["expert_use"] = expert_use(ckpt, r["dataset"], r["n_examples"], r["seed"], None)
atomic_write_bytes(res, (json.dumps(r, indent=2) + "\n").encode())
print(f"{res}: expert use measured on its {r['n_examples']} evaluated examples")
PY
}

# refresh one zoo model: NAME CKPT CONFIG PREV_RESULTS
refresh() {
  local name=$1 ckpt=$2 config=$3 prev=$4
  local res=$out/$name.json corr=()
  reuse "$prev" "$res"
  evaluate "$ckpt" "$res" "$suite"
  record_use "$res" "$ckpt"
  if [ "${CORRUPTIONS:-0}" = 1 ]; then
    evaluate "$ckpt" "$out/$name-corruptions.json" corruptions
    corr=(--corruptions "$out/$name-corruptions.json")
  fi
  local desc preset
  desc=$("$bin/python" - "$config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
moe = f" ({c['moe']} MoE, top-{c['k'] or 1} of {c['experts']} experts)" if c.get("moe") else ""
print(f"{c['arch']} {c['method']}{moe}, {c['preset']} preset ({c['epochs']} epochs, {c['subset']} training examples, "
      f"eps {c['eps_str']}, seed {c['seed']}), trained by robustmoe-bench")
PY
)
  preset=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['preset'])" "$config")
  "$bin/robustmoe-bench" leaderboard publish "$res" --name "robustmoe-fmnist-${name#fmnist-}" --force "${corr[@]}" \
    --title "${name#fmnist-} on fashion-mnist (robustmoe-bench, $preset preset)" --authors robustmoe-bench --venue robustmoe-bench
  "$bin/robustmoe-bench" zoo add "$name" "$ckpt" --results "$res" --force \
    --leaderboard "leaderboards/fashion-mnist/Linf/robustmoe-fmnist-${name#fmnist-}.json" --description "$desc"
}

if [ -d "$run/cells" ]; then
  method=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['method'])" "$run/sweep.json")
  cells=${CELLS:-$(cd "$run/cells" && ls -d -- */ | tr -d /)}
  for c in $cells; do
    [ "$c" = dense ] && continue
    lc=${c,,}; refresh "fmnist-$method-${lc//_/-}" "$run/cells/$c/train/ckpt.pt" "$run/cells/$c/train/config.json" \
      "$run/cells/$c/eval.json"
  done
else
  for m in ${METHODS:-at-dense at-sdense at-sparse at-moe advmoe}; do
    refresh "fmnist-$m" "$run/models/$m/ckpt.pt" "$run/models/$m/config.json" "$run/results/$m.json"
  done
fi
"$bin/robustmoe-bench" leaderboard build
