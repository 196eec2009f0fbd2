"""A leaderboard entry: RobustBench's keys plus MoE extras, typed inside, RobustBench strings outside.

Inside the package an entry is a :class:`LeaderboardEntry` (accuracies as 0-100 floats, ``eps`` as a
float). Only :meth:`LeaderboardEntry.to_json_dict` / :meth:`LeaderboardEntry.from_json_dict` speak
RobustBench's on-disk dialect: accuracies as strings with two decimals (``"87.30"``), ``eps`` as a
string (``"8/255"`` for L-inf radii that are k/255, ``"0.5"`` for L2), keys in RobustBench's order.

MoE extras live in keys prefixed ``robustmoe_`` (documented in ``schema.json``); RobustBench's own
tooling reads entries key by key and never looks at them.

Which number is which (the honest-evaluation choice):

- ``autoattack_acc`` is AutoAttack's number (``robust_acc["autoattack"]`` of the evaluation results);
  an evaluation without AutoAttack cannot be published. The evaluation is a per-example cascade, so
  when other attacks ran before AutoAttack (suites ``standard``, ``full``) this is AutoAttack's figure
  in the cascade: examples those attacks broke count as broken, so it never exceeds AutoAttack alone.
  The entry says so (``robustmoe_autoattack_after`` and the footnote); ``--suite autoattack`` gives
  AutoAttack alone, exactly comparable with RobustBench.
- ``external`` is RobustBench's field for a stronger evaluation than AutoAttack. When our suite's
  per-example worst case (which adds PGD-50, router-targeted and adaptive MoE attacks) is lower than
  AutoAttack's number, it goes there, so RobustBench's ranking (``external`` if present, else
  ``autoattack_acc``) uses the strongest evaluation we ran.
- ``reported`` defaults to the worst case, the only headline robustness number this project reports.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional

from ..config import format_eps, parse_eps
from ..errors import ConfigError, RobustMoEError

#: Version of the ``robustmoe_*`` extras written into entries.
EXTRAS_VERSION = 1
#: Prefix of every key RobustBench does not know.
EXTRA_PREFIX = "robustmoe_"


class LeaderboardError(RobustMoEError):
    """A leaderboard entry cannot be built, written or read (bad input, name clash, bad file)."""


class BenchmarkDataset(str, Enum):
    """Data sets a leaderboard can hold: RobustBench's values plus ours."""

    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"
    fashion_mnist = "fashion-mnist"
    tinyimagenet = "tinyimagenet"

    @classmethod
    def parse(cls, value: str) -> "BenchmarkDataset":
        try:
            return cls(value)
        except ValueError:
            raise LeaderboardError(
                f"unknown leaderboard data set {value!r}; known: {', '.join(m.value for m in cls)}"
            ) from None


class ThreatModel(str, Enum):
    """RobustBench's threat models (folder names under each data set)."""

    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"

    @classmethod
    def parse(cls, value: str) -> "ThreatModel":
        try:
            return cls(value)
        except ValueError:
            raise LeaderboardError(
                f"unknown threat model {value!r}; known: {', '.join(m.value for m in cls)}"
            ) from None


#: Entry and zoo names: letters, digits, ``_``, ``-``, ``.``; no leading dot, no path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is safe as a file name inside one folder, else raise :class:`LeaderboardError`."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise LeaderboardError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '_', '-' or '.', not starting with '.' "
            "(no path separators)"
        )
    return name


def format_acc(value: float) -> str:
    """A 0-100 percentage as RobustBench writes it: two decimals (``87.3`` -> ``"87.30"``)."""
    return f"{float(value):.2f}"


def parse_acc(text: Any, key: str) -> float:
    """Read a RobustBench accuracy string back into a float; bad values raise :class:`LeaderboardError`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LeaderboardError(f"{key} must be a percentage string such as '57.14', got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise LeaderboardError(f"{key} must be a percentage in [0, 100], got {text!r}")
    return value


def format_entry_eps(eps: float, threat_model: ThreatModel) -> str:
    """``eps`` as RobustBench writes it: ``"8/255"`` for L-inf radii that are k/255, else a decimal."""
    if threat_model is ThreatModel.Linf:
        return format_eps(eps)
    return f"{eps:g}"


@dataclass(frozen=True)
class MoEExtras:
    """What RobustBench has no key for: how the model was built and trained, its cost, the rest of the
    evaluation. Percentages are 0-100 floats; ``None`` means not applicable or not measured."""

    method: Optional[str]
    kind: str
    arch: str
    experts: Optional[int]
    scale: Optional[float]
    router: Optional[str]
    gflops_pathway: Optional[float]
    gflops_router: Optional[float]
    gflops_total: Optional[float]
    pgd50_acc: Optional[float]
    worst_case_acc: float
    router_robustness: Optional[dict[str, float]]
    suite: str
    n_examples: int
    failed_checks: tuple[str, ...] = ()
    autoattack_after: tuple[str, ...] = ()
    checkpoint_sha256: Optional[str] = None
    package_version: Optional[str] = None

    def to_json_dict(self) -> dict[str, Any]:
        def acc(v: Optional[float]) -> Optional[str]:
            return None if v is None else format_acc(v)

        rr = None if self.router_robustness is None else {k: format_acc(v) for k, v in sorted(self.router_robustness.items())}
        items: list[tuple[str, Any]] = [
            ("extras_version", EXTRAS_VERSION),
            ("method", self.method),
            ("kind", self.kind),
            ("arch", self.arch),
            ("experts", self.experts),
            ("scale", self.scale),
            ("router", self.router),
            ("gflops_pathway", self.gflops_pathway),
            ("gflops_router", self.gflops_router),
            ("gflops_total", self.gflops_total),
            ("pgd50_acc", acc(self.pgd50_acc)),
            ("worst_case_acc", format_acc(self.worst_case_acc)),
            ("router_robustness", rr),
            ("suite", self.suite),
            ("n_examples", self.n_examples),
            ("failed_checks", list(self.failed_checks)),
            ("autoattack_after", list(self.autoattack_after)),
            ("checkpoint_sha256", self.checkpoint_sha256),
            ("package_version", self.package_version),
        ]
        return {EXTRA_PREFIX + k: v for k, v in items}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> Optional["MoEExtras"]:
        """The extras of an entry dict, or ``None`` for a plain RobustBench entry (no ``robustmoe_*`` keys)."""
        if not any(k.startswith(EXTRA_PREFIX) for k in d):
            return None
        g = lambda k: d.get(EXTRA_PREFIX + k)  # noqa: E731
        opt_acc = lambda k: None if g(k) is None else parse_acc(g(k), EXTRA_PREFIX + k)  # noqa: E731
        rr = g("router_robustness")
        try:
            return cls(
                method=g("method"), kind=g("kind"), arch=g("arch"), experts=g("experts"), scale=g("scale"),
                router=g("router"), gflops_pathway=g("gflops_pathway"), gflops_router=g("gflops_router"),
                gflops_total=g("gflops_total"), pgd50_acc=opt_acc("pgd50_acc"),
                worst_case_acc=parse_acc(g("worst_case_acc"), EXTRA_PREFIX + "worst_case_acc"),
                router_robustness=None if rr is None else {k: parse_acc(v, f"router robustness {k}") for k, v in rr.items()},
                suite=g("suite"), n_examples=g("n_examples"), failed_checks=tuple(g("failed_checks") or ()),
                autoattack_after=tuple(g("autoattack_after") or ()),
                checkpoint_sha256=g("checkpoint_sha256"), package_version=g("package_version"),
            )
        except (AttributeError, TypeError) as e:
            raise LeaderboardError(f"malformed robustmoe extras: {e}") from None


@dataclass(frozen=True)
class LeaderboardEntry:
    """One leaderboard row. ``name`` is RobustBench's ``name`` key: the paper's title (the model's ID is
    the file name). Accuracies are 0-100 floats."""

    dataset: BenchmarkDataset
    threat_model: ThreatModel
    eps: float
    clean_acc: float
    autoattack_acc: float
    reported: float
    name: str
    link: str = ""
    authors: str = ""
    venue: str = "N/A"
    architecture: str = ""
    additional_data: bool = False
    number_forward_passes: int = 1
    external: Optional[float] = None
    footnote: Optional[str] = None
    unreliable: bool = False
    extras: Optional[MoEExtras] = field(default=None, compare=True)

    @property
    def eps_str(self) -> str:
        return format_entry_eps(self.eps, self.threat_model)

    @property
    def ranking_acc(self) -> float:
        """The number RobustBench ranks by: ``external`` when present, else ``autoattack_acc``."""
        return self.external if self.external is not None else self.autoattack_acc

    def to_json_dict(self) -> dict[str, Any]:
        """RobustBench's keys in RobustBench's order and formats, then the ``robustmoe_*`` extras."""
        d: dict[str, Any] = {
            "link": self.link,
            "name": self.name,
            "authors": self.authors,
            "additional_data": bool(self.additional_data),
            "number_forward_passes": int(self.number_forward_passes),
            "dataset": self.dataset.value,
            "venue": self.venue,
            "architecture": self.architecture,
            "eps": self.eps_str,
            "clean_acc": format_acc(self.clean_acc),
            "reported": format_acc(self.reported),
            "autoattack_acc": format_acc(self.autoattack_acc),
        }
        if self.external is not None:
            d["external"] = format_acc(self.external)
        d["footnote"] = self.footnote
        d["unreliable"] = bool(self.unreliable)
        if self.extras is not None:
            d.update(self.extras.to_json_dict())
        return d

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any], threat_model: ThreatModel | str) -> "LeaderboardEntry":
        """Parse an entry as stored on disk (the threat model comes from its folder)."""
        tm = threat_model if isinstance(threat_model, ThreatModel) else ThreatModel.parse(threat_model)
        try:
            eps_text = d["eps"]
            try:
                eps = parse_eps(eps_text, norm=tm.value)
            except ConfigError as e:
                raise LeaderboardError(f"eps: {e}") from None
            ext = d.get("external")
            return cls(
                dataset=BenchmarkDataset.parse(d["dataset"]),
                threat_model=tm,
                eps=eps,
                clean_acc=parse_acc(d["clean_acc"], "clean_acc"),
                autoattack_acc=parse_acc(d["autoattack_acc"], "autoattack_acc"),
                reported=parse_acc(d["reported"], "reported"),
                name=d["name"],
                link=d.get("link", ""),
                authors=d.get("authors", ""),
                venue=d.get("venue", ""),
                architecture=d.get("architecture", ""),
                additional_data=bool(d.get("additional_data", False)),
                number_forward_passes=int(d.get("number_forward_passes", 1)),
                external=None if ext is None else parse_acc(ext, "external"),
                footnote=d.get("footnote"),
                unreliable=bool(d.get("unreliable", False)),
                extras=MoEExtras.from_json_dict(d),
            )
        except KeyError as e:
            raise LeaderboardError(f"missing key {e.args[0]!r}") from None


# ---------------------------------------------------------------------------------------------------
# From evaluation results (the JSON written by ``robustmoe-bench evaluate``) to an entry.

_ARCH_NAMES = {
    "resnet18": "ResNet-18",
    "resnet-mini": "ResNet-mini",
    "resnet-tiny": "ResNet-tiny",
    "vgg16-bn": "VGG-16-BN",
    "vgg-mini": "VGG-mini",
    "densenet": "DenseNet",
    "densenet-mini": "DenseNet-mini",
}


def skipped_attacks(results: Mapping[str, Any]) -> dict[str, str]:
    """Suite entries that did not run on an MoE model, with the reason (e.g. a routing adapter that
    cannot force pathways). Dense models' MoE-only attacks are not listed: they have no routers to attack."""
    if results.get("router_robustness") is None:
        return {}
    out: dict[str, str] = {}
    for a in results.get("attacks") or []:
        if isinstance(a, Mapping) and a.get("skipped"):
            out[str(a.get("name"))] = str(a["skipped"])
    return out


def architecture_label(model: Mapping[str, Any]) -> str:
    """A human architecture string from a model-spec dict, e.g. ``"ResNet-18 MoE (N=2, r=0.5, layer router)"``."""
    arch = str(model.get("arch", "?"))
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    base = f"WideResNet-{m.group(1)}-{m.group(2)}" if m else _ARCH_NAMES.get(arch, arch)
    kind = model.get("kind", "dense")
    if kind == "moe":
        return f"{base} MoE (N={model.get('experts')}, r={float(model.get('scale', 0)):g}, {model.get('router')} router)"
    if kind == "sdense":
        return f"{base} S-Dense (r={float(model.get('scale', 0)):g})"
    if kind == "sparse":
        return f"{base} Sparse (r={float(model.get('scale', 0)):g})"
    return base


def _percent(results: Mapping[str, Any], value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LeaderboardError(f"results: {what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 100.0:
        raise LeaderboardError(f"results: {what} must be a percentage in [0, 100], got {value!r}")
    return v


def failed_checks(results: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the gradient-masking checks that failed, sorted."""
    flags = results.get("flags") or {}
    if not isinstance(flags, Mapping):
        raise LeaderboardError("results: 'flags' must be an object of {check: {passed, evidence}}")
    out = []
    for name, flag in flags.items():
        passed = flag.get("passed") if isinstance(flag, Mapping) else flag
        if passed is False:
            out.append(str(name))
    return tuple(sorted(out))


#: Names under which AutoAttack (or one of its four attacks, as the full suite runs them) appears.
AUTOATTACK_NAMES = ("autoattack", "apgd-ce", "apgd-t", "fab-t", "square")


def attacks_before_autoattack(results: Mapping[str, Any]) -> tuple[str, ...]:
    """Attacks that ran before AutoAttack in the suite's cascade (skipped ones excluded), in order.

    The evaluation is a per-example cascade, so ``robust_acc["autoattack"]`` counts an example as
    robust only if it survived these attacks too: AutoAttack's figure *in the cascade*, never above
    what AutoAttack alone would give. Empty when AutoAttack ran first (its own number)."""
    attacks = results.get("attacks") or []
    before: list[str] = []
    for a in attacks:
        if not isinstance(a, Mapping):
            raise LeaderboardError("results: 'attacks' must be a list of attack objects")
        if a.get("name") in AUTOATTACK_NAMES:  # AutoAttack, or the first of its parts in the full suite
            return tuple(before)
        if a.get("skipped") is None and a.get("robust_acc") is not None:
            before.append(str(a.get("name")))
    return ()


def entry_from_results(
    results: Mapping[str, Any],
    *,
    title: str,
    link: str = "",
    authors: str = "",
    venue: str = "N/A",
    architecture: Optional[str] = None,
    reported: Optional[float] = None,
    footnote: Optional[str] = None,
    additional_data: bool = False,
    number_forward_passes: int = 1,
) -> LeaderboardEntry:
    """Build an entry from an evaluation results dict (see docs/DEVELOPING.md for its format).

    Refuses results without an AutoAttack number. ``unreliable`` is true when the results say so or
    any gradient-masking check failed; failed checks and the use of ``external`` are explained in
    the footnote (after any footnote given)."""
    if not isinstance(results, Mapping):
        raise LeaderboardError("results: expected a JSON object (the output of 'robustmoe-bench evaluate')")
    missing = [k for k in ("dataset", "threat_model", "eps", "clean_acc", "robust_acc") if k not in results]
    if missing:
        raise LeaderboardError(
            f"results lack {', '.join(missing)}: is this the output of 'robustmoe-bench evaluate --out'?"
        )
    dataset = BenchmarkDataset.parse(str(results["dataset"]))
    tm = ThreatModel.parse(str(results["threat_model"]))
    if tm is ThreatModel.corruptions:
        raise LeaderboardError("corruption benchmarks are not produced by robustmoe-bench; only Linf and L2 entries can be published")
    try:
        eps = parse_eps(results["eps"], norm=tm.value)
    except ConfigError as e:
        raise LeaderboardError(f"results: {e}") from None
    robust = results["robust_acc"]
    if not isinstance(robust, Mapping):
        raise LeaderboardError("results: 'robust_acc' must be an object of {attack: accuracy}")
    if robust.get("autoattack") is None:
        raise LeaderboardError(
            f"results of suite {results.get('suite', '?')!r} have no AutoAttack number (robust_acc['autoattack']); "
            "a leaderboard entry needs one: evaluate with a suite that runs AutoAttack (e.g. --suite full)"
        )
    clean = _percent(results, results["clean_acc"], "clean_acc")
    aa = _percent(results, robust["autoattack"], "robust_acc['autoattack']")
    worst = _percent(results, robust.get("worst_case", aa), "robust_acc['worst_case']")
    if worst > aa + 1e-9:
        raise LeaderboardError(
            f"results are inconsistent: worst case {worst:.2f}% is above AutoAttack's {aa:.2f}% "
            "(the worst case is taken over every attack, AutoAttack included)"
        )
    if aa > clean + 1e-9:
        raise LeaderboardError(f"results are inconsistent: AutoAttack accuracy {aa:.2f}% is above clean accuracy {clean:.2f}%")
    pgd50 = robust.get("pgd-50")
    pgd50 = None if pgd50 is None else _percent(results, pgd50, "robust_acc['pgd-50']")
    # Compare as published (two decimals) so 'external' never shows the same string as 'autoattack_acc'.
    external = worst if format_acc(worst) != format_acc(aa) else None
    failed = failed_checks(results)
    aa_after = attacks_before_autoattack(results)
    unreliable = bool(results.get("unreliable", False)) or bool(failed)

    model = results.get("model") or {}
    if not isinstance(model, Mapping):
        raise LeaderboardError("results: 'model' must be a model-spec object")
    kind = str(model.get("kind", "dense"))
    training = results.get("training") or {}
    gflops = results.get("gflops") or {}
    rr = results.get("router_robustness")
    if rr is not None and not isinstance(rr, Mapping):
        raise LeaderboardError("results: 'router_robustness' must be an object of {attack: percentage} or null")
    suite = str(results.get("suite", "?"))

    def g(key: str) -> Optional[float]:
        v = gflops.get(key) if isinstance(gflops, Mapping) else None
        return None if v is None else float(v)

    extras = MoEExtras(
        method=training.get("method") if isinstance(training, Mapping) else None,
        kind=kind,
        arch=str(model.get("arch", "?")),
        experts=int(model["experts"]) if kind == "moe" and "experts" in model else None,
        scale=float(model["scale"]) if kind != "dense" and "scale" in model else None,
        router=str(model["router"]) if kind == "moe" and "router" in model else None,
        gflops_pathway=g("pathway"),
        gflops_router=g("router"),
        gflops_total=g("total"),
        pgd50_acc=pgd50,
        worst_case_acc=worst,
        router_robustness=None if rr is None else {str(k): _percent(results, v, f"router_robustness[{k!r}]") for k, v in rr.items()},
        suite=suite,
        n_examples=int(results.get("n_examples", 0)),
        failed_checks=failed,
        autoattack_after=aa_after,
        checkpoint_sha256=results.get("checkpoint_sha256"),
        package_version=results.get("package_version"),
    )

    notes = [footnote] if footnote else []
    if aa_after:
        notes.append(
            f"autoattack_acc: AutoAttack (standard) in the per-example cascade of suite '{suite}', after "
            f"{', '.join(aa_after)}; examples broken earlier count as broken, so it is at most AutoAttack's "
            "accuracy alone (evaluate with --suite autoattack for that number)."
        )
    if external is not None:
        attacks = ", ".join(str(k) for k in robust if k != "worst_case")
        notes.append(
            f"external: per-example worst case over every attack of robustmoe-bench suite '{suite}' "
            f"({attacks}) on {extras.n_examples} test points; autoattack_acc is AutoAttack alone."
        )
    if failed:
        notes.append(f"Gradient-masking checks failed: {', '.join(failed)}.")
    skipped = skipped_attacks(results)
    if skipped:
        ran = results.get("worst_case_attacks") or [k for k in robust if k != "worst_case"]
        notes.append(
            "Attacks skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items())
            + f". The worst case covers only: {', '.join(str(a) for a in ran)}."
        )
    return LeaderboardEntry(
        dataset=dataset,
        threat_model=tm,
        eps=eps,
        clean_acc=clean,
        autoattack_acc=aa,
        reported=worst if reported is None else _percent(results, reported, "reported"),
        name=title,
        link=link,
        authors=authors,
        venue=venue,
        architecture=architecture if architecture else architecture_label(model),
        additional_data=additional_data,
        number_forward_passes=number_forward_passes,
        external=external,
        footnote="<br>".join(notes) if notes else None,
        unreliable=unreliable,
        extras=extras,
    )
