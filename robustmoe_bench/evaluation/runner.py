"""``evaluate``: load, validate, stream batches through the cascade (resumable, shardable), assemble.

Flow: inputs are validated before anything is written (bad input -> one :class:`RobustMoEError`, no
results file, no state). The evaluation set (all test examples, or ``subset_indices(N, n, seed)``) is
cut into batches of ``batch_size``; only one batch of images is in memory at a time. Each batch runs
the suite's cascade with seeds derived from ``(seed, batch index)`` and its record is saved to
``<out>.state/`` at once. Under ``torchrun`` (``WORLD_SIZE`` > 1) batch ``i`` goes to rank
``i % WORLD_SIZE``; records are gathered (gloo) and rank 0 runs the checks and writes the results, so the
numbers equal a one-process run. Results are assembled only from the records, which is why a resumed,
a sharded and an uninterrupted run give the same JSON (time-valued keys aside, see
:data:`~robustmoe_bench.evaluation.results.TIME_KEYS`).

Determinism note: identical numbers need identical floating-point arithmetic, i.e. the same device
and the same number of CPU threads in every process (``torchrun`` sets ``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from .. import __version__
from ..config import format_eps, parse_eps
from ..errors import CheckpointError, ConfigError, DataError, RoutingCollapseWarning, require_positive_int
from ..adapters.external import model_dataset, model_record
from .results import AttackResult, EvalResult, pct
from ..stats import count_of, wilson
from .state import BatchRecord, StateFolder, mask_to_str, output_lock, str_to_mask
from .suites import SCREEN_GROUP, AttackFactory, PlannedAttack, Suite, derive_seed, get_suite, plan, run_cascade

DEFAULT_BATCH_SIZE = 100
#: Examples (the first of the evaluation set) the gradient-masking checks run on. 200: the checks'
#: binomial rules (see evaluation/checks.py) need the examples to have power; the Square check costs
#: nothing extra (it reads the suite's own Square), the eps-increase check 5 x PGD-20 on these.
CHECK_EXAMPLES = 200
#: Examples the FLOP count averages over (the first of the evaluation set).
GFLOPS_EXAMPLES = 32
#: Conventional L2 radii where a data set has one (RobustBench); elsewhere --eps is required for L2.
L2_DEFAULT_EPS = {"cifar10": 0.5, "cifar100": 0.5}
THREAT_MODELS = ("Linf", "L2")


# ---------------------------------------------------------------------------------------------- inputs

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_digest(model: torch.nn.Module) -> str:
    """A digest of the weights of an in-memory model (identifies it in the resume fingerprint)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_eps(eps: str | float | None, norm: str, dataset: str) -> float:
    """The attack radius: ``eps`` parsed (fractions allowed, pixel units refused) or the data set's default."""
    from ..data import get_dataset_info

    if norm not in THREAT_MODELS:
        raise ConfigError(f"norm must be one of {', '.join(THREAT_MODELS)}, got {norm!r}")
    if eps is not None:
        return parse_eps(eps, norm=norm)
    if norm == "Linf":
        return get_dataset_info(dataset).eps
    if dataset in L2_DEFAULT_EPS:
        return L2_DEFAULT_EPS[dataset]
    raise ConfigError(f"no conventional L2 radius for {dataset}; pass --eps")


def _load_model(model_or_ckpt: Any, device: str, dataset: Optional[str] = None
                ) -> tuple[torch.nn.Module, dict[str, Any], Optional[str], Optional[str]]:
    """(model in eval mode on ``device``, training meta, checkpoint path, checkpoint sha256).

    ``model_or_ckpt``: a checkpoint path, one of our models, an :class:`~robustmoe_bench.adapters.ExternalModel`,
    or any ``nn.Module`` (then ``dataset`` is required: it is wrapped for that data set's images)."""
    from ..adapters.external import ExternalModel, wrap_module
    from ..checkpoint import load_checkpoint
    from ..models import RoutedNet

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available")
    if isinstance(model_or_ckpt, RoutedNet):
        return model_or_ckpt.to(dev).eval(), {}, None, None
    if isinstance(model_or_ckpt, torch.nn.Module):
        model = model_or_ckpt
        if not isinstance(model, ExternalModel):
            if dataset is None:
                raise ConfigError(f"evaluating a {type(model).__name__} needs dataset= (its images, classes and eps)")
            model = wrap_module(model, dataset=dataset)
        src = model.source
        return model.to(dev).eval(), {}, src.get("weights"), src.get("weights_sha256")
    if not isinstance(model_or_ckpt, (str, os.PathLike)):
        raise ConfigError(f"evaluate needs a checkpoint path or a model, got {type(model_or_ckpt).__name__}")
    path = Path(model_or_ckpt)
    ckpt = load_checkpoint(path, map_location="cpu")
    return ckpt.model.to(dev).eval(), dict(ckpt.training), str(path), _sha256(path)


# ---------------------------------------------------------------------------------------------- ranks

@contextmanager
def _distributed() -> Iterator[tuple[int, int]]:
    """(rank, world size); under ``torchrun`` initialises a gloo process group if none exists."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        created = True
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if created:
            dist.destroy_process_group()


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------- progress

class _Progress:
    """A rich progress bar over batches with the current attack in its description (or nothing)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self._p = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._console = Console(stderr=True)
            self._p = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self._console, transient=False,
            )
            self._title = title
            self._task = self._p.add_task(title, total=total)
            self._p.start()

    def attack(self, name: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=f"{self._title}: {name}")
            if not self._console.is_interactive:  # no live bar (a pipe, a worker process): one line per attack
                self._console.print(f"{self._title}: {name}", highlight=False, markup=False)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.update(self._task, description=self._title)
            self._p.stop()


# ---------------------------------------------------------------------------------------------- assembly

def _assemble_masks(records: list[BatchRecord], attacks: list[PlannedAttack]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Concatenate the per-batch masks in batch order: clean ``[n]``, each attack's broken ``[n]`` and
    each attack's fooled ``[n]`` (see :class:`~robustmoe_bench.evaluation.state.AttackRecord`)."""
    clean = torch.cat([str_to_mask(r.clean) for r in records])
    ran = [a for a in attacks if a.skipped is None]
    broken = {a.name: torch.cat([str_to_mask(r.attacks[a.name].broken) for r in records]) for a in ran}
    fooled = {
        a.name: torch.cat([str_to_mask(r.attacks[a.name].fooled) if r.attacks[a.name].fooled
                           else torch.zeros(r.n, dtype=torch.bool) for r in records])
        for a in ran
    }
    return clean, broken, fooled


def alone_masks(attacks: list[PlannedAttack], clean: torch.Tensor, fooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: [n] bool}``: still correct under the attack (or group) *alone*, for every attack and group
    that ran on every example that number needs: the first attack of the cascade, scope ``all``, and
    scope ``alone`` (a group's members in its own cascade; the group under its name). Others are absent."""
    out: dict[str, torch.Tensor] = {}
    ran = [a for a in attacks if a.skipped is None]
    group_fooled: dict[str, torch.Tensor] = {}
    for pos, a in enumerate(ran):
        if a.scope == "alone" and a.group is not None:
            group_fooled[a.group] = group_fooled.get(a.group, torch.zeros_like(clean)) | fooled[a.name]
            out[a.name] = clean & ~group_fooled[a.group]
            out[a.group] = out[a.name]
        elif a.scope in ("all", "alone") or pos == 0:
            out[a.name] = clean & ~fooled[a.name]
    return out


def _gflops(model: torch.nn.Module, x: torch.Tensor) -> Optional[dict[str, float]]:
    """GFLOPs per input if the analysis module is available, else ``None`` (never fails the run)."""
    try:
        from ..flops import gflops
    except ImportError:
        return None
    try:
        g = gflops(model, x)
    except Exception as e:  # noqa: BLE001 -- a FLOP count must not sink an hour of attacks
        warnings.warn(f"FLOP counting failed ({type(e).__name__}: {e}); gflops recorded as null", stacklevel=2)
        return None
    return {"pathway": round(float(g.pathway), 8), "router": round(float(g.router), 8), "total": round(float(g.total), 8)}


def evaluate(
    model_or_ckpt: Any,
    suite: str | Suite = "full",
    n_examples: Optional[int] = None,
    eps: str | float | None = None,
    norm: str = "Linf",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    *,
    dataset: Optional[str] = None,
    check_examples: int = CHECK_EXAMPLES,
    autoattack: str = "reference",
    attack_factory: AttackFactory | None = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> EvalResult:
    """Evaluate a checkpoint (path) or a model under a suite; returns (and with ``out`` writes) the result.

    The model may be any ``nn.Module``: our models, an :class:`~robustmoe_bench.adapters.ExternalModel`
    (normalisation, output reduction and routing adapter inside), or a plain module taking images in
    [0, 1] and returning logits (give ``dataset``).

    ``n_examples``: ``None`` = every test example, else a seeded subset. ``eps``: a float or a fraction
    string (``"8/255"``); ``None`` = the data set's default. ``resume``: continue from ``<out>.state``.
    ``attack_factory`` (tests) replaces ``create_attack``; ``on_batch(i)`` is called after batch ``i`` is
    saved. ``autoattack``: how AutoAttack and its four attacks run, ``"fast"`` (the same decisions for less
    work, :mod:`robustmoe_bench.attacks.autoattack_fast`) or ``"reference"`` (pyautoattack's
    ``run_standard_evaluation``); the engine is recorded with each attack's parameters. Bad input raises a :class:`~robustmoe_bench.errors.RobustMoEError` before anything is written.
    """
    from ..data import as_tensors, get_dataset_info, load_dataset, subset_indices

    # -------------------------------------------------- validate everything before writing anything
    the_suite = get_suite(suite)
    from ..attacks.autoattack import ENGINES

    if autoattack not in ENGINES:
        raise ConfigError(f"--autoattack must be one of {', '.join(ENGINES)}, got {autoattack!r}")
    require_positive_int(batch_size, "batch size")
    require_positive_int(n_examples, "number of examples", optional=True)
    if resume and out is None:
        raise ConfigError("--resume needs --out (the state lives next to the results file)")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as results.json")
    model, training, ckpt_path, ckpt_sha = _load_model(model_or_ckpt, device, dataset)
    spec = getattr(model, "spec", None)
    info = get_dataset_info(model_dataset(model))  # type: ignore[arg-type]
    if dataset is not None and get_dataset_info(dataset).name != info.name:
        raise ConfigError(f"the model was built for {info.name}, not {dataset}")
    num_classes = spec.num_classes if spec is not None else model.num_classes
    input_shape = spec.input_shape if spec is not None else model.data_shape
    if num_classes != info.num_classes:
        raise CheckpointError(
            f"the model has {num_classes} classes but {info.name} has {info.num_classes}; "
            "this checkpoint does not fit its data set"
        )
    if tuple(input_shape) != tuple(info.input_shape):
        raise CheckpointError(f"the model takes inputs {tuple(input_shape)} but {info.name} has {tuple(info.input_shape)}")
    eps_val = resolve_eps(eps, norm, info.name)
    test = load_dataset(info.name, "test", root=data_root)
    n_total = len(test)  # type: ignore[arg-type]
    if n_examples is not None and n_examples > n_total:
        raise DataError(f"asked for {n_examples} examples but the {info.name} test set has only {n_total}")
    indices = torch.arange(n_total) if n_examples is None else subset_indices(n_total, n_examples, seed)
    n = int(indices.numel())
    if n == 0:
        raise DataError(f"the {info.name} test set is empty")
    from ..adapters.routing import get_adapter

    adapter = get_adapter(model)
    routed = adapter is not None
    attacks = plan(the_suite, routed, min(adapter.num_experts()) if adapter is not None else 0,
                   can_force=bool(adapter is not None and adapter.can_force),
                   adapter_name=adapter.name if adapter is not None else "")
    from ..attacks import ATTACKS
    from ..attacks.autoattack import PyAutoAttack

    for a in attacks:
        cls = ATTACKS.get(a.attack) if a.attack in ATTACKS else None
        if isinstance(cls, type) and issubclass(cls, PyAutoAttack) and "engine" not in a.hyper:
            a.hyper["engine"] = autoattack
    factory = attack_factory
    if factory is None:
        from ..attacks import create_attack as factory  # noqa: N813
    # Build each attack once now: unknown attacks or bad hyper-parameters fail before any work.
    params: dict[str, dict[str, Any]] = {}
    for a in attacks:
        if a.skipped is None:
            p = dict(factory(a.attack, eps_val, norm=norm, seed=seed, **a.hyper).params())
            p.pop("seed", None)  # per-batch seeds derive from the run's seed (see suites.batch_attack_seed)
            params[a.name] = p
        else:
            params[a.name] = dict(a.hyper)
    dev = next(model.parameters()).device
    n_batches = (n + batch_size - 1) // batch_size

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = as_tensors(test, indices[i * batch_size:(i + 1) * batch_size])
        return x.to(dev), y.to(dev)

    fingerprint = {
        "suite": the_suite.name, "attacks": [[a.name, a.attack, sorted(a.hyper.items()), a.scope] for a in attacks],
        "dataset": info.name, "norm": norm, "eps": eps_val, "n_examples": n, "seed": seed,
        "batch_size": batch_size, "indices_sha256": hashlib.sha256(indices.numpy().tobytes()).hexdigest(),
        "model_sha256": (ckpt_sha if spec is not None else None) or _model_digest(model), "checks": the_suite.checks,
        "check_examples": check_examples,
    }

    with _distributed() as (rank, world), ExitStack() as held:
        state = StateFolder(StateFolder.for_output(out), fingerprint) if out is not None else None
        if state is not None and rank == 0:
            held.enter_context(output_lock(out))  # type: ignore[arg-type]  # one writer per output
            state.prepare(resume)
        _barrier(world)
        done = state.load_batches() if (state is not None and resume) else {}
        mine = [i for i in range(n_batches) if i % world == rank]
        todo = [i for i in mine if i not in done]
        who = f"{training['method']}: " if training.get("method") else ""
        bar = _Progress(progress and rank == 0, len(mine), f"{who}{the_suite.name} on {info.name}")
        for _ in range(len(mine) - len(todo)):
            bar.advance()
        records = {i: done[i] for i in mine if i in done}
        try:
            for i in todo:
                x, y = batch(i)
                rec = run_cascade(model, x, y, attacks, eps=eps_val, norm=norm, seed=seed, batch_index=i,
                                  factory=factory, on_attack=bar.attack)
                if state is not None:
                    state.save_batch(rec)
                records[i] = rec
                bar.advance()
                if on_batch is not None:
                    on_batch(i)
        finally:
            bar.close()
        gathered = _gather([r.to_dict() for r in records.values()], world)

        result: Optional[EvalResult] = None
        if rank == 0:
            allrec = sorted((BatchRecord.from_dict(d) for part in gathered for d in part), key=lambda r: r.index)
            if [r.index for r in allrec] != list(range(n_batches)):
                raise RuntimeError("batch records are missing after gathering every rank's results")
            result = _finish(
                model, allrec, attacks, params, the_suite, info, n, eps_val, norm, seed, batch, batch_size,
                check_examples, factory, state, routed, training, ckpt_path, ckpt_sha,
                n_total, fingerprint["indices_sha256"],
            )
            if out is not None:
                result.save(out)
                state.remove()  # type: ignore[union-attr]
        result = _broadcast(result, world)
    assert result is not None
    return result


def _finish(
    model: torch.nn.Module, records: list[BatchRecord], attacks: list[PlannedAttack], params: dict[str, dict[str, Any]],
    suite: Suite, info: Any, n: int, eps: float, norm: str, seed: int,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], batch_size: int, check_examples: int,
    factory: AttackFactory, state: Optional[StateFolder], routed: bool, training: dict[str, Any],
    ckpt_path: Optional[str], ckpt_sha: Optional[str], n_total: Optional[int] = None, indices_sha: str = "",
) -> EvalResult:
    """Checks, FLOPs and the result object, from the gathered batch records only."""
    clean, broken, fooled = _assemble_masks(records, attacks)
    alone = alone_masks(attacks, clean, fooled)
    robust = clean.clone()
    robust_acc: dict[str, float] = {}
    entries: list[AttackResult] = []
    routing: dict[str, float] = {}
    for a in attacks:
        if a.skipped is not None:
            entries.append(AttackResult(a.name, a.attack, params[a.name], None, 0, 0, None, a.scope, 0.0, a.skipped))
            continue
        robust &= ~broken[a.name]
        robust_acc[a.name] = pct(int(robust.sum()), n)
        recs = [r.attacks[a.name] for r in records]
        change = pct(sum(r.routing_changed for r in recs), n) if routed else None
        if change is not None:
            routing[a.name] = change
        entries.append(AttackResult(
            a.name, a.attack, params[a.name], robust_acc[a.name], sum(r.n_attacked for r in recs),
            int(broken[a.name].sum()), change, a.scope, round(sum(r.seconds for r in recs), 3),
            robust_acc_alone=pct(int(alone[a.name].sum()), n) if a.name in alone else None,
        ))
    for a in attacks:  # a composite attack (AutoAttack's parts): the accuracy after its last part
        if a.group is not None and a.name in robust_acc:
            robust_acc[a.group] = robust_acc[a.name]
    robust_acc["worst_case"] = pct(int(robust.sum()), n)
    ran = [a.name for a in attacks if a.skipped is None]
    robust_alone = {name: pct(int(m.sum()), n) for name, m in alone.items()}
    intervals = {
        "clean_acc": wilson(int(clean.sum()), n).to_dict(),
        "robust_acc": {name: wilson(count_of(v, n), n).to_dict() for name, v in robust_acc.items()},
        "robust_acc_alone": {name: wilson(int(m.sum()), n).to_dict() for name, m in alone.items()},
    }
    if routed:  # % of examples whose routing no attack changed: a proportion of n like the accuracies
        intervals["router_robustness"] = {name: wilson(n - count_of(v, n), n).to_dict() for name, v in routing.items()}
    outcomes = {"clean": mask_to_str(clean), "worst_case": mask_to_str(robust)}
    for group in ("autoattack", SCREEN_GROUP):
        if group in alone:
            outcomes[group] = mask_to_str(alone[group])
    seconds = sum(r.seconds for r in records)

    # the first examples of the evaluation set serve the checks and the FLOP count
    k = min(n, max(check_examples, GFLOPS_EXAMPLES))
    xs, ys = [], []
    for i in range((k + batch_size - 1) // batch_size):
        x, y = batch(i)
        xs.append(x)
        ys.append(y)
    x_head, y_head = torch.cat(xs)[:k], torch.cat(ys)[:k]

    flags: dict[str, dict[str, Any]] = {}
    if suite.checks:
        saved = state.load_extra("checks") if state is not None else None
        if saved is not None:
            flags = saved["flags"]
            seconds += float(saved["seconds"])
        else:
            t0 = time.perf_counter()
            m = min(n, check_examples)
            whitebox = clean[:m].clone()
            for a in attacks:
                if a.skipped is None and a.whitebox:
                    whitebox &= ~broken[a.name][:m]
            # the suite's own Square ran last, on exactly the white-box survivors: its breaks are the check's
            last = [a for a in attacks if a.skipped is None]
            square = broken[last[-1].name][:m] if (last and last[-1].attack == "square") else None
            flags = _run_checks(model, x_head[:m], y_head[:m], whitebox, eps, norm, seed, factory, square)
            dt = time.perf_counter() - t0
            seconds += dt
            if state is not None:
                state.save_extra("checks", {"flags": flags, "seconds": dt})
    t0 = time.perf_counter()
    gfl = _gflops(model, x_head[:GFLOPS_EXAMPLES])
    use = _expert_use(model, batch, n, batch_size) if routed else None
    seconds += time.perf_counter() - t0

    return EvalResult(
        suite=suite.name, dataset=info.name, threat_model=norm, eps=eps,
        eps_str=format_eps(eps) if norm == "Linf" else f"{eps:g}", n_examples=n, seed=seed,
        clean_acc=pct(int(clean.sum()), n), robust_acc=robust_acc, attacks=entries, routing=routing,
        router_robustness={k2: round(100.0 - v, 4) for k2, v in routing.items()} if routed else None,
        flags=flags, unreliable=any(not f["passed"] for f in flags.values()), gflops=gfl,
        seconds=round(seconds, 3), model=model_record(model), training=training,
        checkpoint=ckpt_path, checkpoint_sha256=ckpt_sha, package_version=__version__, worst_case_attacks=ran,
        n_total=n_total, robust_acc_alone=robust_alone, intervals=intervals,
        examples={"indices_sha256": indices_sha, **outcomes}, expert_use=use, estimate=suite.estimate,
    )


def _expert_use(model: torch.nn.Module, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], n: int,
                batch_size: int) -> Optional[dict[str, Any]]:
    """Routing health on all ``n`` clean evaluated examples (one clean forward per batch)."""
    from ..adapters.expert_use import ExpertUseMeter, expert_sets
    from ..adapters.routing import require_adapter

    adapter = require_adapter(model, "expert use")
    meter = ExpertUseMeter(max(adapter.num_experts()), adapter.layer_names())
    for i in range((n + batch_size - 1) // batch_size):
        meter.add(expert_sets(model, batch(i)[0])[1])
    use = meter.result()
    if use is not None and use.collapsed:
        warnings.warn(f"routing collapsed on the evaluated examples -- {use.summary()}: routing attacks cannot "
                      "change it, so router-robustness figures measure nothing here", RoutingCollapseWarning, stacklevel=3)
    return use.to_dict() if use is not None else None


def _run_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, whitebox: torch.Tensor, eps: float,
                norm: str, seed: int, factory: AttackFactory,
                square_broken: Optional[torch.Tensor] = None) -> dict[str, dict[str, Any]]:
    from .checks import run_checks

    return run_checks(model, x, y, whitebox.to(x.device), eps=eps, norm=norm, seed=derive_seed(seed, 3), factory=factory,
                      square_broken=square_broken)


__all__ = ["CHECK_EXAMPLES", "DEFAULT_BATCH_SIZE", "THREAT_MODELS", "evaluate", "resolve_eps"]
