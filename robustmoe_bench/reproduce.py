"""``reproduce``: a mini Table 1 of the AdvMoE paper that can be cited -- the five robust methods trained
with several seeds, each evaluated on the same test examples with the ``table1`` suite (the ``standard``
suite's PGD-50 and AutoAttack standard alone, PGD-50 with the paper's public code's step, and for MoE
models the adaptive and router attacks of ``full``),
aggregated as mean +- std over seeds, and the paper's claims checked one by one.

Each seed is one run of the main job in ``OUT/seed-<s>`` without dissection or publishing, and the jobs of
all seeds form one dependency graph (:func:`robustmoe_bench.pipeline.run_pipelines`): a free worker takes
the next job of any seed, so ``--workers`` up to 5 x seeds are used and no seed waits for the previous
one's last evaluation. A killed reproduction resumes where it stopped: finished training runs and
evaluations are reused, an interrupted training or evaluation continues from its state. Every seed
evaluates the same test subset (``eval_seed``), so seeds differ only in training.

Claims (the paper's Table 1 and its text), each judged on robust accuracy RA = the per-example worst case
of the suite:

* ``advmoe-beats-at-moe``: AdvMoE RA > AT(MoE) RA -- the paper's main claim;
* ``at-moe-below-at-sdense``: AT(MoE) RA < AT(S-Dense) RA -- plain adversarial training of an MoE-CNN
  falls short of a dense model of the same pathway width;
* ``advmoe-vs-at-dense``: AdvMoE RA >= AT(Dense) RA -- AdvMoE matches the Dense model at about half its
  GFLOPs (reported with the GFLOPs of both).

Expert use: for every MoE model, the share of the evaluated test examples that its busiest expert
receives, per MoE layer (:func:`expert_use`). A model whose busiest expert takes at least
``COLLAPSED_SHARE`` of the inputs in some MoE layer is marked collapsed (in every layer: it computes as a
single-pathway, S-Dense-like model), and the table says so next to the claims.

A claim "held" when the sign of the difference of the seed means is the claimed one; the difference
"exceeds the seeds' spread" when ``|mean_a - mean_b| > std_a + std_b`` (sample standard deviations over
seeds). Next to it, per seed, the paired comparison of the two models on the same test examples (exact
McNemar test of their per-example worst-case outcomes, :func:`paired`): it separates a difference of the
models of one seed from the evaluation's sampling noise, while the spread rule judges the methods. No
choice is made on test examples: the models, presets and defaults are fixed before this runs.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .adapters.expert_use import COLLAPSED_SHARE
from .checkpoint import atomic_write_bytes
from .errors import ConfigError
from .pipeline import METHODS, PipelineConfig, run_pipelines
from .stats import ALPHA, mcnemar_paired

WORST = "worst_case"
LABELS = {"at-dense": "AT (Dense)", "at-sdense": "AT (S-Dense)", "at-sparse": "AT (Sparse)", "at-moe": "AT (MoE)",
          "advmoe": "AdvMoE", "advmoe-public": "AdvMoE (public code's objective)"}


@dataclass
class ReproduceConfig:
    """Options of :func:`reproduce`."""

    out: str = "runs/table1"
    preset: str = "fmnist-repro"
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    suite: str = "table1"
    n_examples: int = 1000
    eval_seed: int = 0
    data_root: str | None = None
    workers: int = 0

    def validate(self) -> "ReproduceConfig":
        from .evaluation.suites import get_suite
        from .training.config import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        get_suite(self.suite)
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds needs at least two different seeds (a spread), got {list(self.seeds)}")
        if self.n_examples < 1:
            raise ConfigError(f"--n-examples must be positive, got {self.n_examples}")
        missing = [m for m in ("at-dense", "at-sdense", "at-moe", "advmoe") if m not in self.methods]
        if missing:
            raise ConfigError(f"the paper's claims need the methods {', '.join(missing)} too")
        return self


@dataclass
class MethodStats:
    method: str
    label: str
    n_seeds: int
    n_examples: int
    clean_mean: float
    clean_std: float
    ra_mean: float
    ra_std: float
    per_attack: dict[str, tuple[float, float]]
    gflops: float | None
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Claim:
    key: str
    text: str
    held: bool
    a: str
    b: str
    diff: float
    spread: float
    exceeds_spread: bool
    #: per seed, the paired comparison on the same test examples (see :func:`paired`)
    paired: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        verdict = "held" if self.held else "did NOT hold"
        beyond = "exceeds" if self.exceeds_spread else "does not exceed"
        out = (f"{self.text}: **{verdict}** ({LABELS[self.a]} minus {LABELS[self.b]} = {self.diff:+.2f} pts; "
               f"the difference {beyond} the seeds' spread, {self.spread:.2f} pts)")
        if self.paired:
            per = ", ".join(f"seed {p['seed']} {p['diff']:+.1f} pts ({p['only_a']} vs {p['only_b']}, p = {p['p_value']:.2g})"
                            for p in self.paired)
            sig = sum(1 for p in self.paired if p["p_value"] < ALPHA and p["diff"] > 0)
            out += (f"; paired on the same examples (exact McNemar, per seed: {LABELS[self.a]}-only vs "
                    f"{LABELS[self.b]}-only robust examples): {per}; {LABELS[self.a]} significantly ahead "
                    f"(p < {ALPHA}) on {sig} of {len(self.paired)} seeds")
        return out


def expert_use_of(model: Any, x: Any, batch_size: int = 250) -> dict[str, Any] | None:
    """Expert use of ``model`` on inputs ``x`` (:class:`~robustmoe_bench.adapters.expert_use.ExpertUse` as a
    dict), or ``None`` for a model without routing."""
    from .adapters.expert_use import expert_use_of as _of

    use = _of(model, x, batch_size)
    return use.to_dict() if use is not None else None


def expert_use(ckpt: str, dataset: str, n_examples: int, seed: int, data_root: str | None) -> dict[str, Any] | None:
    """:func:`expert_use_of` for a checkpoint on the test examples its evaluation used (same subset); for
    results written before evaluations recorded it themselves."""
    from .adapters.routing import get_adapter
    from .checkpoint import load_checkpoint
    from .data import as_tensors, load_dataset, subset_indices

    model = load_checkpoint(ckpt).model.eval()
    if get_adapter(model) is None:  # no routing: no need to read the test set
        return None
    test = load_dataset(dataset, "test", data_root)
    x, _ = as_tensors(test, subset_indices(len(test), min(n_examples, len(test)), seed))
    return expert_use_of(model, x)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(results: dict[str, list[dict[str, Any]]]) -> dict[str, MethodStats]:
    """Per method, mean and sample std over seeds of clean accuracy, RA and each attack's accuracy.

    ``results``: method -> the results JSON objects of its seeds (same suite, same examples).
    """
    stats = {}
    for method, runs in results.items():
        ns = {r["n_examples"] for r in runs}
        if len(ns) != 1:
            raise ConfigError(f"{method}: seeds were evaluated on different numbers of examples {sorted(ns)}")
        common = set.intersection(*(set(r["robust_acc"]) for r in runs)) - {WORST}
        attacks = [a for a in runs[0]["robust_acc"] if a in common]  # the suite's cascade order
        g = runs[0].get("gflops") or {}
        stats[method] = MethodStats(
            method=method, label=LABELS.get(method, method), n_seeds=len(runs), n_examples=ns.pop(),
            clean_mean=_mean_std([r["clean_acc"] for r in runs])[0], clean_std=_mean_std([r["clean_acc"] for r in runs])[1],
            ra_mean=_mean_std([r["robust_acc"][WORST] for r in runs])[0],
            ra_std=_mean_std([r["robust_acc"][WORST] for r in runs])[1],
            per_attack={a: _mean_std([r["robust_acc"][a] for r in runs]) for a in attacks},
            gflops=g.get("total"),
            runs=[_run_row(r) for r in runs],
        )
    return stats


def _run_row(r: dict[str, Any]) -> dict[str, Any]:
    """One seed's entry of :attr:`MethodStats.runs`, from its results JSON."""
    ex = r.get("examples") or {}
    return {"seed": r.get("training", {}).get("seed"), "clean_acc": r["clean_acc"], "ra": r["robust_acc"][WORST],
            "router_robustness": r.get("router_robustness"), "worst_case": ex.get(WORST),
            "indices_sha256": ex.get("indices_sha256")}


def paired(a: MethodStats, b: MethodStats) -> list[dict[str, Any]]:
    """Per seed that both methods ran, the paired comparison of their per-example worst-case outcomes on
    the same test examples: ``diff`` (RA of ``a`` minus RA of ``b`` in points), the discordant counts
    ``only_a`` / ``only_b`` (robust for one model only) and the exact McNemar p-value. Seeds whose results
    lack per-example outcomes, or whose evaluated examples differ, are left out."""
    out = []
    theirs = {r["seed"]: r for r in b.runs}
    for r in a.runs:
        o = theirs.get(r["seed"]) or {}
        t = mcnemar_paired(r.get("worst_case"), r.get("indices_sha256"), o.get("worst_case"), o.get("indices_sha256"))
        if t is None:
            continue
        n = len(r["worst_case"])
        out.append({"seed": r["seed"], "n": n, "diff": round(100.0 * (t.only_a - t.only_b) / n, 4),
                    "only_a": t.only_a, "only_b": t.only_b, "p_value": t.p_value})
    return out


def judge(stats: dict[str, MethodStats]) -> list[Claim]:
    """The paper's three claims on ``stats`` (see the module docstring)."""
    def claim(key: str, text: str, a: str, b: str, strict: bool) -> Claim:
        sa, sb = stats[a], stats[b]
        diff = sa.ra_mean - sb.ra_mean
        spread = sa.ra_std + sb.ra_std
        return Claim(key, text, diff > 0 if strict else diff >= 0, a, b, round(diff, 4), round(spread, 4),
                     abs(diff) > spread, paired(sa, sb))

    out = [claim("advmoe-beats-at-moe", "AdvMoE RA > AT(MoE) RA", "advmoe", "at-moe", True),
           claim("at-moe-below-at-sdense", "AT(MoE) RA < AT(S-Dense) RA", "at-sdense", "at-moe", True)]
    c = claim("advmoe-vs-at-dense", "AdvMoE RA >= AT(Dense) RA", "advmoe", "at-dense", False)
    ga, gd = stats["advmoe"].gflops, stats["at-dense"].gflops
    if ga is not None and gd is not None:
        c.text += f" at {ga:.4g} vs {gd:.4g} GFLOPs"
    out.append(c)
    return out


def render_markdown(stats: dict[str, MethodStats], claims: list[Claim], meta: dict[str, Any]) -> str:
    # every attack any method ran, in cascade order; a method that did not run one (the router attacks on a
    # model without routers) shows "-" there
    attacks: list[str] = []
    for s in stats.values():
        for i, a in enumerate(s.per_attack):
            if a not in attacks:  # after the attack this method ran just before it
                before = [b for b in list(s.per_attack)[:i] if b in attacks]
                attacks.insert(attacks.index(before[-1]) + 1 if before else 0, a)
    lines = [f"# Mini Table 1: {meta['preset']} preset, {meta['suite']} suite", "",
             f"{len(meta['seeds'])} training seeds ({', '.join(map(str, meta['seeds']))}) per method; each model "
             f"evaluated on the same {meta['n_examples']} Fashion-MNIST test examples (subset seed "
             f"{meta['eval_seed']}). Mean +- sample std over seeds, in %. RA = per-example worst case over "
             f"the suite's attacks.", "",
             "| method | GFLOPs | SA | " + " | ".join(attacks) + " | RA |",
             "|---|---:|---:|" + "---:|" * len(attacks) + "---:|"]
    for s in stats.values():
        cells = [f"{s.per_attack[a][0]:.2f} +- {s.per_attack[a][1]:.2f}" if a in s.per_attack else "-"
                 for a in attacks]
        g = "-" if s.gflops is None else f"{s.gflops:.4g}"
        lines.append(f"| {s.label} | {g} | {s.clean_mean:.2f} +- {s.clean_std:.2f} | " + " | ".join(cells)
                     + f" | {s.ra_mean:.2f} +- {s.ra_std:.2f} |")
    seeds = list(meta["seeds"])
    lines += ["", "Per seed (SA / RA, %):", "", "| method | " + " | ".join(f"seed {x}" for x in seeds) + " |",
              "|---|" + "---:|" * len(seeds)]
    for s in stats.values():
        by_seed = {r["seed"]: r for r in s.runs}
        cells = [f"{by_seed[x]['clean_acc']:.1f} / {by_seed[x]['ra']:.1f}" if x in by_seed else "-" for x in seeds]
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    uses = [(s, r) for s in stats.values() for r in s.runs if r.get("expert_use")]
    if uses:
        lines += ["", "Expert use of the MoE models on the evaluated examples (the busiest expert's share of the "
                      "inputs, highest over the MoE layers; 1/N when balanced):", "",
                  "| method | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---:|" * len(seeds)]
        for s in stats.values():
            by_seed = {r["seed"]: r.get("expert_use") for r in s.runs}
            if not any(by_seed.values()):
                continue
            cells = [f"{100 * max(u['busiest_share']):.1f} % of N={u['n_experts']}"
                     + (" (collapsed)" if u["collapsed"] else "") if u else "-" for u in (by_seed.get(x) for x in seeds)]
            lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    routed = [s for s in stats.values() if any(r.get("router_robustness") for r in s.runs)]
    if routed:
        lines += ["", "Router robustness of the MoE models (% of the evaluated examples whose expert choice, in every "
                      "MoE layer, the router attack did not change; a collapsed router cannot change, so its figure "
                      "is marked):", "", "| method | " + " | ".join(f"seed {x}" for x in seeds) + " |",
                  "|---|" + "---:|" * len(seeds)]
        for s in routed:
            by_seed = {r["seed"]: r for r in s.runs}
            cells = []
            for x in seeds:
                r = by_seed.get(x) or {}
                rr = r.get("router_robustness") or {}
                if not rr:
                    cells.append("-")
                    continue
                text = ", ".join(f"{k.removeprefix('router-')} {v:.1f}" for k, v in sorted(rr.items()))
                if (r.get("expert_use") or {}).get("collapsed"):
                    text += " (collapsed router)"
                cells.append(text)
            lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    n_collapsed = sum(1 for _, r in uses if r["expert_use"]["collapsed"])
    lines += ["", "## The paper's claims", ""]
    if n_collapsed:
        lines += [f"**{n_collapsed} of {len(uses)} MoE models route (almost) every input to one expert** (busiest "
                  f"expert >= {100 * COLLAPSED_SHARE:.0f} % of the inputs in some MoE layer): there they compute "
                  "a single pathway, so the claims below do not test a working routing.", ""]
    lines += [f"- {c.line()}" for c in claims]
    lines += ["", f"Produced by `{meta['command']}`; its last invocation took {meta['seconds']:.0f} s (a resumed "
              f"run reuses what earlier invocations finished)."]
    if meta.get("eval_seconds") is not None:
        lines[-1] += f" The {sum(s.n_seeds for s in stats.values())} evaluations took {meta['eval_seconds']:.0f} s in all."
    return "\n".join(lines) + "\n"


def reproduce(cfg: ReproduceConfig, console: Console | None = None) -> dict[str, Any]:
    """Train, evaluate and aggregate (resumable); writes ``OUT/table1.{json,md}`` and returns the JSON."""
    cfg.validate()
    console = console or Console()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    # every seed's jobs in one graph: a free worker takes the next job of any seed (no idle tail per seed)
    runs = run_pipelines([PipelineConfig(
        out=str(out / f"seed-{seed}"), preset=cfg.preset, methods=cfg.methods, suite=cfg.suite,
        n_examples=cfg.n_examples, seed=seed, eval_seed=cfg.eval_seed, dissect=False, publish=False,
        data_root=cfg.data_root, workers=cfg.workers) for seed in cfg.seeds], console)
    for res in runs:
        for m in cfg.methods:
            results[m].append(json.loads(Path(res.results[m]).read_text()))
    stats = aggregate(results)
    for m, s in stats.items():  # expert use of each MoE model on the examples it was evaluated on
        for run, r, res in zip(s.runs, results[m], runs):
            run["expert_use"] = (r["expert_use"] if r.get("expert_use") is not None else
                                 expert_use(res.checkpoints[m], r["dataset"], r["n_examples"], cfg.eval_seed, cfg.data_root))
    claims = judge(stats)
    meta = dict(preset=cfg.preset, suite=cfg.suite, seeds=list(cfg.seeds), n_examples=cfg.n_examples,
                eval_seed=cfg.eval_seed, seconds=round(time.perf_counter() - t0, 1),
                eval_seconds=round(sum(float(r.get("seconds") or 0.0) for rs in results.values() for r in rs), 1),
                command=f"robustmoe-bench reproduce --out {cfg.out} --preset {cfg.preset} --seeds "
                        f"{','.join(map(str, cfg.seeds))} --n-examples {cfg.n_examples} --suite {cfg.suite}")
    doc = {"meta": meta, "methods": {m: asdict(s) for m, s in stats.items()},
           "claims": [asdict(c) | {"line": c.line()} for c in claims]}
    atomic_write_bytes(out / "table1.json", (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(out / "table1.md", render_markdown(stats, claims, meta).encode())
    return doc


__all__ = ["ReproduceConfig", "reproduce", "aggregate", "judge", "render_markdown", "expert_use", "expert_use_of",
           "MethodStats", "Claim", "COLLAPSED_SHARE"]
