"""The ``screen`` suite's error and cost against the zoo's measured AutoAttack (issue 21, item 3).

For every zoo model with recorded results, run ``evaluate(ckpt, suite="screen")`` on the *same examples*
(the recorded ``n_examples``, ``seed`` and ``eps``; the indices' sha256 is checked) and compare with the
recorded AutoAttack-alone outcome per example (``examples["autoattack"]``):

* **error**: screen estimate minus AutoAttack, in points (the estimate can only be too high: an example it
  breaks, AutoAttack's APGD-CE/APGD-T would break too under the same seeds);
* **agreement**: share of examples with the same outcome;
* **cost**: the screen's attack seconds over the recorded AutoAttack seconds (its four attacks). The recorded
  seconds come from another run (another load on this shared machine), so the row also gives the cost
  *normalised* by APGD-CE, which both runs execute on the same examples with the same settings:
  ``(screen seconds / screen APGD-CE seconds) / (AutoAttack seconds / recorded APGD-CE seconds)``.

    .venv/bin/python benchmarks/screen_vs_autoattack.py --threads 1

Rows are appended to ``results/screen_vs_autoattack.jsonl`` (each with the zoo weights' sha256);
``results/screen_vs_autoattack.md`` is rewritten from the latest row of each zoo model, so a model replaced
in the zoo shows its new measurement (the earlier rows stay in the JSONL).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from cells import machine

from robustmoe_bench.evaluation import evaluate
from robustmoe_bench.evaluation.suites import SCREEN_GROUP
from robustmoe_bench.zoo import weights_path, zoo_models

AA_PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def write_markdown(rows: list[dict[str, Any]], out: Path) -> None:
    lines = [
        "# `screen` suite vs the zoo's measured AutoAttack",
        "",
        "Written by `benchmarks/screen_vs_autoattack.py` (see its docstring); one row per model and run. Same "
        "examples as the zoo's recorded evaluation; AutoAttack = the recorded AutoAttack-alone outcome.",
        "",
        "| model | n | AutoAttack % | screen % | error (points) | outcomes agree | screen s | AutoAttack s (recorded) "
        "| cost | cost, normalised by APGD-CE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['aa']:.2f} | {r['screen']:.2f} | {r['screen'] - r['aa']:+.2f} | "
            f"{100 * r['agreement']:.1f} % | {r['seconds_screen']:.0f} | {r['seconds_aa']:.0f} | "
            f"{r['seconds_screen'] / r['seconds_aa']:.2f} | {r['cost_normalised']:.2f} |")
    if rows:
        errs = [abs(r["screen"] - r["aa"]) for r in rows]
        costs = [r["cost_normalised"] for r in rows]
        lines += ["", f"Largest error {max(errs):.2f} points; normalised cost {min(costs):.2f}-{max(costs):.2f}. "
                      f"Machine: {rows[-1]['machine']}."]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="", help="comma-separated zoo names (default: every model with results)")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    out = Path(args.results)
    for m in zoo_models():
        r = m.results
        if not r or (wanted and m.name not in wanted) or "autoattack" not in (r.get("examples") or {}):
            continue
        t0 = time.perf_counter()
        res = evaluate(weights_path(m), suite="screen", n_examples=r["n_examples"], eps=r["eps"], seed=r["seed"],
                       progress=False)
        wall = time.perf_counter() - t0
        assert res.examples is not None
        if res.examples["indices_sha256"] != r["examples"]["indices_sha256"]:
            raise SystemExit(f"{m.name}: the screen ran on other examples than the recorded evaluation")
        ours = [c == "1" for c in res.examples[SCREEN_GROUP]]
        ref = [c == "1" for c in r["examples"]["autoattack"]]
        secs = {a.name: a.seconds for a in res.attacks}
        rec = {a["name"]: a["seconds"] for a in r["attacks"]}
        screen_s = sum(secs.values())
        aa_s = sum(rec[p] for p in AA_PARTS) if all(p in rec for p in AA_PARTS) else rec["autoattack"]
        row = {
            "model": m.name, "sha256": m.sha256, "n": r["n_examples"], "suite_recorded": r["suite"],
            "aa": 100 * sum(ref) / len(ref), "screen": 100 * sum(ours) / len(ours),
            "agreement": sum(a == b for a, b in zip(ours, ref)) / len(ref),
            "screen_only_robust": sum(a and not b for a, b in zip(ours, ref)),
            "aa_only_robust": sum(b and not a for a, b in zip(ours, ref)),
            "seconds_screen": round(screen_s, 1), "seconds_screen_wall": round(wall, 1), "seconds_aa": round(aa_s, 1),
            "cost_normalised": round((screen_s / secs["apgd-ce"]) / (aa_s / rec["apgd-ce"]), 3)
            if "apgd-ce" in rec else float("nan"),
            "threads": args.threads,
            "machine": machine(),
        }
        print(json.dumps(row), flush=True)
        with open(out / "screen_vs_autoattack.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    latest = {}
    for line in open(out / "screen_vs_autoattack.jsonl"):
        row = json.loads(line)
        latest[row["model"]] = row
    write_markdown(sorted(latest.values(), key=lambda r: r["model"]), out / "screen_vs_autoattack.md")


if __name__ == "__main__":
    main()
