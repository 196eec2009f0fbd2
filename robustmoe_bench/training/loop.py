"""The training loop: ``train(config, out_dir) -> TrainResult``.

It owns data order, the learning-rate schedule, per-epoch evaluation, checkpoints, resume and
distribution; the algorithm of each step comes from the method registry (:mod:`.methods`).

Exact resume. Every random choice in an epoch comes from generators seeded by ``(seed, epoch, rank)``:
the data order, augmentation, and the PGD random starts of training and of the validation monitor. So
the RNG state at an epoch boundary is a function of the epoch number and need not be saved; what is
saved at each epoch end (``state.safetensors``, atomically) is the model, the optimiser's momentum
buffers, the epoch counter and the metric history. The schedule is a function of the step number.
A run killed at any point and resumed with ``resume=True`` therefore ends with bitwise the same weights
as an uninterrupted run (on CPU, same thread count).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import InMemoryImageDataset, as_tensors, load_dataset, subset_indices
from ..adapters.expert_use import expert_use_of
from ..errors import ConfigError, RoutingCollapseWarning
from ..models.factory import RoutedNet
from . import distributed as D
from . import outputs as O
from .config import TrainConfig
from .methods import Method, StepContext, get_method, set_trainable

_STREAM_DATA, _STREAM_AUG, _STREAM_ATTACK, _STREAM_EVAL, _STREAM_GLOBAL = range(5)
#: Seed of the validation split (fixed: every run and method monitors the same examples).
VALIDATION_SEED = 20_251_201


@dataclass
class TrainResult:
    """What a finished run produced. Accuracies are percentages on the validation split of the training set."""

    out_dir: Path
    ckpt: Path
    final_clean_acc: float
    final_pgd10_acc: float
    seconds: float
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Data:
    train: Dataset
    indices: Tensor  # [n] training example indices (the subset)
    hold_x: Tensor  # [m, C, H, W] validation examples (split off the training set)
    hold_y: Tensor  # [m]


def _seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    # Distinct, stable 63-bit seeds per (seed, epoch, stream, rank).
    return (seed * 1_000_003 + epoch * 10_007 + stream * 101 + rank * 7_919 + 17) % (2**63 - 1)


def validation_split(n_train: int, holdout: int) -> tuple[Tensor, Tensor]:
    """``(validation, rest)`` index tensors of a training set of ``n_train`` examples.

    The validation examples are a fixed draw (:data:`VALIDATION_SEED`), the same for every run seed and
    method, so monitors and default choices compare like with like; at most a fifth of the training
    set is held out. No run ever trains on them, and no test example is looked at.
    """
    m = min(int(holdout), n_train // 5)
    val = subset_indices(n_train, m, VALIDATION_SEED)
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[val] = False
    return val, keep.nonzero().squeeze(1)


def _load_data(cfg: TrainConfig) -> _Data:
    train = load_dataset(cfg.dataset, "train", cfg.data_root, augment=bool(cfg.augment))
    plain = load_dataset(cfg.dataset, "train", cfg.data_root) if cfg.augment else train
    n = len(train)  # type: ignore[arg-type]
    val, rest = validation_split(n, cfg.holdout)
    if cfg.subset is not None:
        if cfg.subset > rest.numel():
            raise ConfigError(f"subset {cfg.subset} exceeds the {rest.numel()} training examples left after "
                              f"the {val.numel()}-example validation split")
        idx = rest[subset_indices(rest.numel(), cfg.subset, cfg.seed)]
    else:
        idx = rest
    if idx.numel() < cfg.batch_size:
        raise ConfigError(f"the training set has {idx.numel()} examples, fewer than one batch ({cfg.batch_size})")
    hx, hy = as_tensors(plain, val)  # type: ignore[arg-type]
    return _Data(train, idx, hx, hy)


def make_optimizer(net: RoutedNet, groups: list[list[torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.SGD:
    """The SGD optimiser of a phase: one group per parameter group of the method; a group made of router
    parameters only runs at ``--router-lr`` times the schedule's rate (``pg["lr_scale"]``; the loop sets
    ``pg["lr"] = lr * pg["lr_scale"]`` every step)."""
    router_ids = {id(p) for p in net.router_parameters()} if net.spec.is_moe else set()
    return torch.optim.SGD([{"params": g, "lr": cfg.lr,
                             "lr_scale": cfg.router_lr_scale if g and all(id(p) in router_ids for p in g) else 1.0}
                            for g in groups], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def validation_examples(cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """The validation split of ``cfg``'s training set (the per-epoch monitor's examples, never trained on):
    ``x`` ``[m, C, H, W]`` in [0, 1] and ``y`` ``[m]``. For choosing defaults without touching test data."""
    cfg = cfg.resolve()
    d = _load_data(cfg)
    return d.hold_x, d.hold_y


def _epoch_batches(data: _Data, cfg: TrainConfig, epoch: int, streams: int, dctx: D.DistContext) -> list[Tensor]:
    """This rank's index batches for one epoch, ``streams`` consecutive batches per step (AdvMoE: 2,
    from independent permutations, so the two batches of a step differ)."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, epoch, _STREAM_DATA))
    n, b = data.indices.numel(), cfg.batch_size
    perms = [data.indices[torch.randperm(n, generator=g)] for _ in range(streams)]
    out = []
    for s in range(n // b):
        for p in perms:
            out.append(D.shard(p[s * b:(s + 1) * b], dctx))
    return out


def _iter_steps(data: _Data, batches: list[Tensor], streams: int, cfg: TrainConfig, epoch: int,
                dctx: D.DistContext) -> Iterator[list[tuple[Tensor, Tensor]]]:
    dev = dctx.device
    if isinstance(data.train, InMemoryImageDataset):
        g = torch.Generator().manual_seed(_seed(cfg.seed, epoch, _STREAM_AUG, dctx.rank))
        loaded = (data.train.batch(i, generator=g) for i in batches)
    else:
        loaded = iter(DataLoader(data.train, batch_sampler=[i.tolist() for i in batches],
                                 num_workers=cfg.workers))
    while True:
        group = []
        for _ in range(streams):
            try:
                x, y = next(loaded)
            except StopIteration:
                return
            group.append((x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)))
        yield group


def _cosine(lr: float, step: int, total: int) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * step / max(1, total)))


@torch.no_grad()
def _clean_correct(net: RoutedNet, x: Tensor, y: Tensor) -> int:
    return int((net(x).argmax(1) == y).sum())


def evaluate_holdout(net: RoutedNet, x: Tensor, y: Tensor, eps: float, steps: int, seed: int,
                     batch: int = 250) -> tuple[float, float]:
    """Clean and PGD-``steps`` (the evaluation's own PGD: cross-entropy, random start, step
    2.5*eps/steps) accuracy in percent on ``x`` ``[m, C, H, W]``, ``y`` ``[m]``; an example is robust
    only if also correct clean."""
    from ..attacks import create_attack

    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    clean = robust = 0
    try:
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i:i + batch].to(dev), y[i:i + batch].to(dev)
            with torch.no_grad():
                ok = net(xb).argmax(1) == yb
            clean += int(ok.sum())
            xa = create_attack("pgd", eps, steps=steps, seed=seed + i)(net, xb, yb)
            with torch.no_grad():
                robust += int((ok & (net(xa).argmax(1) == yb)).sum())
    finally:
        net.train(was)
    m = max(1, x.shape[0])
    return 100.0 * clean / m, 100.0 * robust / m


def _momentum_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    return {f"opt.{i}.momentum_buffer": s["momentum_buffer"]
            for i, s in opt.state_dict()["state"].items() if s.get("momentum_buffer") is not None}


def _load_momentum(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt.") and k.endswith(".momentum_buffer"):
            state[int(k.split(".")[1])] = {"momentum_buffer": v}
    sd["state"] = state
    opt.load_state_dict(sd)


class WeightAverage:
    """The exponential moving average of a model's weights and float buffers (``--ema``).

    ``update(net, t)`` after step ``t`` (0-based, counted from the start of the phase) moves every float
    tensor of :attr:`model`'s state toward ``net``'s with decay ``min(decay, (1 + t) / (10 + t))`` and copies
    the others (counters, fixed masks). ``model`` is a copy of the network, never trained, in eval use.
    ``saved``: tensors of :meth:`tensors` from a checkpoint of the same phase (resume).
    """

    PREFIX = "ema."

    def __init__(self, net: torch.nn.Module, decay: float, saved: dict[str, Tensor] | None = None) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(net)
        self.model.requires_grad_(False)
        if saved:
            state = {k[len(self.PREFIX):]: v for k, v in saved.items() if k.startswith(self.PREFIX)}
            own = self.model.state_dict()
            if set(state) != set(own):
                raise ConfigError("the saved state's weight average does not match the model; start the run again")
            self.model.load_state_dict(state)

    def rate(self, t: int) -> float:
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, t: int) -> None:
        d = self.rate(t)
        src = net.state_dict()
        for k, v in self.model.state_dict().items():
            w = src[k].detach()
            if v.is_floating_point():
                v.mul_(d).add_(w.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(w)

    def tensors(self) -> dict[str, Tensor]:
        return {self.PREFIX + k: v for k, v in self.model.state_dict().items()}


def training_meta(cfg: TrainConfig, history: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """The ``training`` metadata stored in checkpoints: method, hyper-parameters and final accuracies."""
    last = history[-1] if history else {}
    extra = {}
    if cfg.model_kind == "moe" and cfg.balance is not None:  # the balancing loss is part of the objective
        extra = {"balance": cfg.balance, "balance_weight": cfg.balance_weight, "router_z": cfg.router_z,
                 "router_lr": cfg.router_lr}
    return {
        **extra,
        "method": cfg.method, "kind": cfg.model_kind, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "eps": cfg.eps, "eps_str": cfg.eps_str,
        "train_steps": cfg.train_steps, "step_size": cfg.step_size, "trades_start": cfg.trades_start, "beta": cfg.beta,
        **({"ema": cfg.ema} if cfg.ema is not None else {}), "seed": cfg.seed,
        "subset": cfg.subset, "holdout": cfg.holdout, "preset": cfg.preset, "augment": cfg.augment,
        "phase_epochs": cfg.phase_epochs, "from_dense": cfg.from_dense,
        **({"finetune_lr": cfg.finetune_lr} if cfg.finetune_lr is not None else {}), "world_size": world,
        "epochs_done": len(history), "final_clean_acc": last.get("clean_acc"),
        "final_pgd10_acc": last.get("pgd10_acc"),
    }


class _Bar:
    """A rich progress bar per epoch (loss and running training accuracy), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.console import Console

            self.console = Console()

    def start(self, label: str, total: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeElapsedColumn(),
                          console=self.console, transient=True)
        self.p.start()
        from rich.markup import escape

        self.t = self.p.add_task(escape(label), total=total, loss="-", acc="-")

    def update(self, loss: float, acc: float) -> None:
        if self.enabled:
            self.p.update(self.t, advance=1, loss=f"{loss:.3f}", acc=f"{acc:.1f}%")

    def stop(self, summary: str) -> None:
        if self.enabled:
            self.p.stop()
            self.console.print(summary, highlight=False, markup=False)


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = False) -> TrainResult:
    """Train ``config`` into ``out_dir`` (``ckpt.pt``, ``config.json``, ``metrics.jsonl``, ``trajectory.png``).

    ``resume``: continue the run stored in ``out_dir`` after its last finished epoch (the folder's
    ``config.json`` must describe the same run). Under ``torchrun`` trains data-parallel; only rank 0
    writes. Raises :class:`~robustmoe_bench.errors.RobustMoEError` subclasses for bad input, before
    anything is written.
    """
    cfg = config.resolve()
    method = get_method(cfg.method)
    dctx = D.setup(cfg.device)
    try:
        return _train(cfg, method, Path(out_dir), progress, resume, dctx)
    finally:
        D.teardown(dctx)


def _train(cfg: TrainConfig, method: Method, out: Path, progress: bool, resume: bool,
           dctx: D.DistContext) -> TrainResult:
    O.check_out_dir(out, cfg, resume)
    if cfg.batch_size % dctx.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} does not split over {dctx.world_size} processes")
    data = _load_data(cfg)
    start, history, momentum = 0, [], {}
    state_path = out / O.STATE
    if resume and state_path.is_file():
        ck = load_checkpoint(state_path, map_location=dctx.device)
        extra = ck.meta.get("extra", {})
        if int(extra.get("world_size", 1)) != dctx.world_size:
            raise ConfigError(f"{out} was trained with {extra.get('world_size')} processes; resume it with as many "
                              f"(got {dctx.world_size}) so the data order stays the same")
        net: RoutedNet = ck.model  # type: ignore[assignment]
        start, history, momentum = int(extra["epoch"]), list(extra["history"]), ck.extra_tensors
    else:
        torch.manual_seed(cfg.seed)
        net = method.build_model(cfg)
    method.check_model(net)  # before anything is written
    net.to(dctx.device)
    D.barrier(dctx)  # every rank has checked the folder before rank 0 writes into it
    if dctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        O.write_config(out, cfg)

    phases = method.phases(cfg)
    bounds = [sum(p.epochs for p in phases[:i]) for i in range(len(phases) + 1)]
    total_epochs = bounds[-1]
    streams = method.batches_per_step
    steps = data.indices.numel() // cfg.batch_size
    bar = _Bar(progress and dctx.is_main)
    cur_phase = -1
    opt: torch.optim.Optimizer | None = None
    avg: WeightAverage | None = None
    fwd: torch.nn.Module = net
    collapse_warned = any(h.get("expert_use", {}).get("collapsed") for h in history)  # once per run

    for epoch in range(start, total_epochs):
        ph = max(i for i in range(len(phases)) if bounds[i] <= epoch and phases[i].epochs > 0)
        in_phase = epoch - bounds[ph]
        if ph != cur_phase:
            net = method.prepare(net, ph, cfg).to(dctx.device)
            groups = method.param_groups(net, ph)
            set_trainable(net, [p for g in groups for p in g])
            opt = make_optimizer(net, groups, cfg)
            if in_phase > 0 and momentum:
                _load_momentum(opt, momentum)
            if cfg.ema is not None:  # the average restarts with each phase (at-sparse's models differ)
                avg = WeightAverage(net, cfg.ema, momentum if in_phase > 0 else None)
            # Every trainable parameter gets a gradient each step, MoE included: an MoE conv's experts
            # are slices of one weight tensor and the routers get straight-through gradients.
            fwd = D.wrap(net, dctx, find_unused=False)
            cur_phase = ph
        assert opt is not None
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(_seed(cfg.seed, epoch, _STREAM_GLOBAL, dctx.rank))
        sctx = StepContext(net, fwd, opt, cfg, torch.Generator().manual_seed(
            _seed(cfg.seed, epoch, _STREAM_ATTACK, dctx.rank)), distributed=dctx.active)
        batches = _epoch_batches(data, cfg, epoch, streams, dctx)
        phase_total = steps * phases[ph].epochs
        net.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        label = f"epoch {epoch + 1}/{total_epochs}" + (f" [{phases[ph].name}]" if len(phases) > 1 else "")
        bar.start(label, steps)
        lr = cfg.lr
        for s, group in enumerate(_iter_steps(data, batches, streams, cfg, epoch, dctx)):
            lr = _cosine(cfg.lr * phases[ph].lr_scale, in_phase * steps + s, phase_total)
            for pg in opt.param_groups:
                pg["lr"] = lr * pg["lr_scale"]
            r = method.step(sctx, group)
            if avg is not None:
                avg.update(net, in_phase * steps + s)
            for k, v in r.losses.items():
                sums[k] = sums.get(k, 0.0) + v * r.seen
            correct += r.correct
            seen += r.seen
            bar.update(sums["loss"] / seen, 100.0 * correct / seen)
        D.sync_buffers(net, dctx)
        identical = D.ranks_identical(net, dctx)
        # the model the run outputs: the weight average when --ema is on, else the last iterate
        made = avg.model if avg is not None else net
        clean, robust = (evaluate_holdout(made, data.hold_x, data.hold_y, float(cfg.eps), cfg.eval_steps,
                                          _seed(cfg.seed, epoch, _STREAM_EVAL))
                         if dctx.is_main else (0.0, 0.0))
        raw: dict[str, float] = {}
        if avg is not None and dctx.is_main:
            rc, rr = evaluate_holdout(net, data.hold_x, data.hold_y, float(cfg.eps), cfg.eval_steps,
                                      _seed(cfg.seed, epoch, _STREAM_EVAL))
            raw = {"raw_clean_acc": rc, "raw_pgd10_acc": rr}
        row: dict[str, Any] = {
            "epoch": epoch + 1, "phase": phases[ph].name, "lr_end": lr,
            **{k if k == "loss" else f"{k}_loss": v / max(1, seen) for k, v in sums.items()},
            "train_acc": 100.0 * correct / max(1, seen), "clean_acc": clean, "pgd10_acc": robust, **raw,
            "holdout": int(data.hold_y.numel()), "seconds": round(time.perf_counter() - t0, 3),
            # CPU time of this process: on a shared machine, the better measure of the work done
            "cpu_seconds": round(time.process_time() - c0, 3),
        }
        if dctx.is_main:
            use = expert_use_of(made, data.hold_x)
            if use is not None:  # routing health on the validation examples (clean)
                row["expert_use"] = use.to_dict()
                if use.collapsed and not collapse_warned:
                    collapse_warned = True
                    warnings.warn(f"{cfg.method} epoch {epoch + 1}: routing collapsed -- {use.summary()}; the MoE "
                                  "computes a single pathway there (see --balance and --router-lr)", RoutingCollapseWarning,
                                  stacklevel=2)
        if dctx.active:
            row["world_size"] = dctx.world_size
            row["ranks_identical"] = identical
        history.append(row)
        bar.stop(_summary(row, total_epochs, cfg.method))
        if dctx.is_main:
            save_checkpoint(state_path, net, training=training_meta(cfg, history, dctx.world_size),
                            extra={"epoch": epoch + 1, "history": history, "world_size": dctx.world_size},
                            extra_tensors={**_momentum_tensors(opt), **(avg.tensors() if avg is not None else {})})
            O.write_metrics(out, history)
        D.barrier(dctx)

    if dctx.active:
        box = [history]
        torch.distributed.broadcast_object_list(box, src=0)
        history = box[0]
    ckpt = out / O.CKPT
    if dctx.is_main:
        save_checkpoint(ckpt, avg.model if avg is not None else net,
                        training=training_meta(cfg, history, dctx.world_size), extra={"config": cfg.to_dict()})
        O.write_metrics(out, history)
        O.plot_trajectory(out, history, f"{cfg.method}: {net.spec.describe()}, eps={cfg.eps_str}")
    D.barrier(dctx)
    last = history[-1]
    return TrainResult(out, ckpt, float(last["clean_acc"]), float(last["pgd10_acc"]),
                       float(sum(h["seconds"] for h in history)), len(history), history)


def _summary(row: dict[str, Any], total: int, method: str) -> str:
    parts = [f"{method} epoch {row['epoch']}/{total}"]
    if row.get("phase") not in (None, "train"):
        parts[0] += f" [{row['phase']}]"
    loss = f"loss {row['loss']:.3f}"
    if "natural_loss" in row and "robust_loss" in row:
        loss += f" (CE {row['natural_loss']:.3f}, KL {row['robust_loss']:.3f})"
    parts += [loss, f"train {row['train_acc']:.1f}%",
              f"validation clean {row['clean_acc']:.1f}% PGD-10 {row['pgd10_acc']:.1f}%",
              f"lr {row['lr_end']:.4f}", f"{row['seconds']:.1f}s"]
    use = row.get("expert_use")
    if use:
        parts.insert(-2, f"busiest expert {100 * max(use['busiest_share']):.0f}%"
                     + (" COLLAPSED" if use["collapsed"] else ""))
    return " | ".join(parts)


__all__ = ["TrainResult", "WeightAverage", "train", "evaluate_holdout", "training_meta", "validation_examples", "validation_split",
           "VALIDATION_SEED"]
