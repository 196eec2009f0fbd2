"""Where AutoAttack's wall time goes on our models, and what is the floor (issue 21, item 1).

For one checkpoint and the first ``n`` examples of the seeded test subset (``subset_indices(10000, n, 0)``),
the reference AutoAttack (``pyautoattack.AutoAttack(version="standard")``, batch 250) runs its cascade
attack by attack (APGD-CE, APGD-T, FAB-T, Square: each on the examples still robust, as the standard
version does) through a thin wrapper that counts the examples the model sees with and without autograd
and the time spent inside the forward. Per attack the table gives the wall time, the examples forwarded
(with grad = followed by a backward; without grad), the *floor* = those counts times the per-example cost
of one forward (no grad) and one forward + backward at batch min(n, 250) measured on the same machine just
before, and floor / wall (the share of the time that is the model's own compute; the rest is the
attacks' own tensor work and Python).

The same cascade then runs once more with the model in ``channels_last`` memory format (weights and
inputs): its wall time and the per-example agreement of the outcome with the reference run.
Finally the forward alone (no grad, batch 100 and 250) is timed in eager NCHW, eager channels_last,
``torch.jit.optimize_for_inference`` and ``torch.compile`` (inductor, freezing on).

    .venv/bin/python benchmarks/autoattack_profile.py model_zoo/fmnist-at-dense.safetensors --n 100 --threads 2

Rows are appended to ``results/autoattack_profile.jsonl`` and ``results/autoattack_profile.md`` is
rewritten from all rows.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from robustmoe_bench import load_checkpoint
from robustmoe_bench.data import as_tensors, load_dataset, subset_indices

ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


class Counting(torch.nn.Module):
    """The model, counting forwarded examples (with / without autograd) and the time inside forward."""

    def __init__(self, model: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        self.reset()

    def reset(self) -> None:
        self.grad = self.nograd = 0
        self.t_forward = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad += x.shape[0]
        else:
            self.nograd += x.shape[0]
        t = time.perf_counter()
        out = self.model(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)
        self.t_forward += time.perf_counter() - t
        return out


def per_example(fn: Callable[[], Any], batch: int, seconds: float = 2.0) -> float:
    """Milliseconds per example of ``fn`` (one batch per call), after two warm-up calls."""
    fn(), fn()
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - t) / reps / batch * 1e3


def unit_costs(model: torch.nn.Module, shape: tuple[int, ...], batch: int = 250) -> tuple[float, float]:
    """(forward without grad, forward + input-gradient backward) in ms per example at ``batch``."""
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def fwd_bwd() -> None:
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xx), y), xx)

    return per_example(fwd, batch), per_example(fwd_bwd, batch)


def run_cascade(model: Counting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The standard cascade, attack by attack; (robust mask after all four, per-attack counters)."""
    from pyautoattack import AutoAttack

    robust = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        robust &= model(x).argmax(1).eq(y)
    rows = []
    for name in ATTACKS:
        idx = robust.nonzero().flatten()
        model.reset()
        t = time.perf_counter()
        if idx.numel():
            aa = AutoAttack(model, norm="Linf", eps=0.1, seed=0, version="standard", device="cpu")
            aa.attacks_to_run = [name]  # the standard version's settings, one attack at a time
            x_adv, _ = aa.run_standard_evaluation(x[idx], y[idx], batch_size=250)
            with torch.no_grad():
                robust[idx] &= model.model(x_adv.contiguous(memory_format=torch.channels_last)
                                           if model.channels_last else x_adv).argmax(1).eq(y[idx])
        rows.append(dict(attack=name, n_attacked=int(idx.numel()), wall_s=round(time.perf_counter() - t, 2),
                         fwd_grad_examples=model.grad, fwd_nograd_examples=model.nograd,
                         t_forward_s=round(model.t_forward, 2)))
    return robust, rows


def forward_variants(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Forward (no grad) ms per example at batch 100 and 250 in four execution modes."""
    out: dict[str, dict[int, float]] = {}
    for batch in (100, 250):
        x = torch.rand(batch, *shape)
        xc = x.contiguous(memory_format=torch.channels_last)
        mc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        modes: dict[str, Callable[[], Any]] = {"eager NCHW": lambda: model(x), "eager channels_last": lambda: mc(xc)}
        with torch.no_grad():
            try:
                jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x).eval()))
                modes["jit optimize_for_inference"] = lambda: jit(x)
            except Exception as e:  # noqa: BLE001  (recorded, not hidden)
                out.setdefault("jit optimize_for_inference", {})[batch] = float("nan")
                print(f"jit: {type(e).__name__}: {e}")
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            comp = torch.compile(copy.deepcopy(model))
            t = time.perf_counter()
            comp(x)
            out.setdefault("compile time (s)", {})[batch] = round(time.perf_counter() - t, 1)
            modes["torch.compile (inductor, freezing)"] = lambda: comp(x)
            for name, fn in modes.items():
                out.setdefault(name, {})[batch] = round(per_example(fn, batch), 3)
    return out


def write_markdown(rows: list[dict[str, Any]], out: Path) -> str:
    lines = ["# Where AutoAttack's time goes (reference pyautoattack, standard version)", "",
             "Made by `benchmarks/autoattack_profile.py` (its docstring says how); one section per run. "
             "*floor*: examples forwarded x the per-example cost of a forward (no grad) or forward + backward "
             "at batch min(n, 250) (the attacks' batches shrink as examples fall, so it is a floor), measured just before on the same machine; *floor / wall*: the model's own compute "
             "as a share of the attack's time.", ""]
    for r in rows:
        f, fb = r["unit_ms"]["forward"], r["unit_ms"]["forward_backward"]
        lines += [f"## {Path(r['checkpoint']).name}, n = {r['n']}, {r['threads']} thread(s)", "",
                  f"`{r['command']}` (torch {r['torch']}, {r['machine']}, {r['cores']} cores; "
                  f"{'other work ran on the machine meanwhile' if r.get('shared') else 'machine otherwise idle'})", "",
                  f"Per-example cost at batch {r['unit_ms']['batch']}: forward {f:.3f} ms, forward + backward {fb:.3f} ms. "
                  f"Clean accuracy {r['clean_acc']:.1f} %, AutoAttack (reference) {r['aa_acc']:.1f} %.", "",
                  "| attack | examples attacked | wall (s) | share | examples fwd+bwd | examples fwd only "
                  "| floor (s) | floor / wall |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        total = sum(a["wall_s"] for a in r["reference"])
        for a in r["reference"]:
            floor = (a["fwd_grad_examples"] * fb + a["fwd_nograd_examples"] * f) / 1e3
            lines.append(f"| {a['attack']} | {a['n_attacked']} | {a['wall_s']:.1f} | {a['wall_s'] / total:.0%} | "
                         f"{a['fwd_grad_examples']} | {a['fwd_nograd_examples']} | {floor:.1f} | "
                         f"{floor / a['wall_s']:.0%} |" if a["wall_s"] else f"| {a['attack']} | 0 | 0 | | | | | |")
        cl = sum(a["wall_s"] for a in r["channels_last"])
        lines += ["", f"Reference cascade {total:.1f} s; the same cascade with the model in channels_last "
                  f"{cl:.1f} s ({total / cl:.2f}x), per-example outcome agreement {r['agreement']:.1%} "
                  f"(AutoAttack {r['aa_acc_cl']:.1f} %).", "",
                  "Forward alone, no grad (ms per example):", "", "| mode | batch 100 | batch 250 |", "|---|---:|---:|"]
        for mode, v in r["forward_modes"].items():
            lines.append(f"| {mode} | {v.get('100', v.get(100))} | {v.get('250', v.get(250))} |")
        lines.append("")
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", action="store_true", help="record that other work ran on the machine meanwhile")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "autoattack_profile"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("auto-attack").propagate = False
    model = load_checkpoint(args.checkpoint).model.eval()
    x, y = as_tensors(load_dataset(model.spec.dataset, "test"), subset_indices(10000, args.n, 0))
    shape = tuple(x.shape[1:])
    unit_batch = min(args.n, 250)
    f, fb = unit_costs(model, shape, unit_batch)
    with torch.no_grad():
        clean = model(x).argmax(1).eq(y).float().mean().item() * 100
    robust_ref, ref_rows = run_cascade(Counting(model), x, y)
    robust_cl, cl_rows = run_cascade(Counting(model, channels_last=True), x, y)
    row = dict(checkpoint=args.checkpoint, n=args.n, threads=args.threads, shared=args.shared,
               command=f"python benchmarks/autoattack_profile.py {args.checkpoint} --n {args.n} --threads {args.threads}"
               + (" --shared" if args.shared else ""),
               torch=torch.__version__, machine=platform.machine(), cores=os.cpu_count(),
               unit_ms=dict(forward=round(f, 4), forward_backward=round(fb, 4), batch=unit_batch), clean_acc=clean,
               aa_acc=robust_ref.float().mean().item() * 100, aa_acc_cl=robust_cl.float().mean().item() * 100,
               agreement=robust_ref.eq(robust_cl).float().mean().item(), reference=ref_rows, channels_last=cl_rows,
               forward_modes=forward_variants(model, shape))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")
    with log.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(write_markdown(rows, out))


if __name__ == "__main__":
    main()
