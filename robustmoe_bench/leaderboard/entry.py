"""A leaderboard entry: RobustBench's keys plus MoE extras, typed inside, RobustBench strings outside.

Inside the package an entry is a :class:`LeaderboardEntry` (accuracies as 0-100 floats, ``eps`` as a
float). Only :meth:`LeaderboardEntry.to_json_dict` / :meth:`LeaderboardEntry.from_json_dict` speak
RobustBench's on-disk dialect: accuracies as strings with two decimals (``"87.30"``), ``eps`` as a
string (``"8/255"`` for L-inf radii that are k/255, ``"0.5"`` for L2), keys in RobustBench's order.

MoE extras live in keys prefixed ``robustmoe_`` (documented in ``schema.json``); RobustBench's own
tooling reads entries key by key and never looks at them.

Which number is which (the honest-evaluation choice):

- ``autoattack_acc`` is AutoAttack (standard) *alone* on the evaluated examples, as RobustBench means
  it: ``robust_acc_alone["autoattack"]`` of the evaluation results (the ``standard``, ``full`` and
  ``autoattack`` suites run AutoAttack on every clean-correct example). Results written before that
  number existed only have AutoAttack's figure in the cascade (``robust_acc["autoattack"]``: examples
  earlier attacks broke count as broken, so it can be lower than AutoAttack alone); the entry then says
  so (``robustmoe_autoattack_after`` and the footnote). An evaluation without AutoAttack cannot be published.
- ``external`` is RobustBench's field for a stronger evaluation than AutoAttack. When our suite's
  per-example worst case (which adds PGD-50, router-targeted and adaptive MoE attacks) is lower than
  AutoAttack's number, it goes there, so RobustBench's ranking (``external`` if present, else
  ``autoattack_acc``) uses the strongest evaluation we ran.
- Every number comes with its uncertainty in the extras: ``robustmoe_n_examples`` of
  ``robustmoe_n_total`` test points and 95 % Wilson intervals (``robustmoe_intervals``).
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
#: Always used with ``fullmatch`` (``$`` would also match before a trailing newline).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
#: Schemes a published link may use; anything else (``javascript:``, ``data:``, ...) is refused.
LINK_SCHEMES = ("http", "https")


def check_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is safe as a file name inside one folder, else raise :class:`LeaderboardError`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise LeaderboardError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '_', '-' or '.', not starting with '.' "
            "(no path separators)"
        )
    return name


def link_problem(link: Any) -> Optional[str]:
    """``None`` if ``link`` is empty or an http(s) URL with a host and no spaces or control characters,
    else why not. Only such links are ever rendered as links."""
    from urllib.parse import urlsplit

    if not isinstance(link, str):
        return f"link must be a string, got {type(link).__name__}"
    if link == "":
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in link):
        return f"link {link!r} contains spaces or control characters"
    try:
        parts = urlsplit(link)
    except ValueError:
        return f"link {link!r} is not a URL"
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.netloc:
        return f"link {link!r} must be an http:// or https:// URL"
    return None


def check_link(link: Any) -> str:
    """Return ``link`` if :func:`link_problem` finds nothing, else raise :class:`LeaderboardError`."""
    problem = link_problem(link)
    if problem:
        raise LeaderboardError(problem)
    return link


def format_acc(value: float) -> str:
    """A 0-100 percentage as RobustBench writes it: two decimals (``87.3`` -> ``"87.30"``)."""
    return f"{float(value):.2f}"


def parse_acc(text: Any, key: str) -> float:
    """Read a RobustBench accuracy string back into a float; bad values raise :class:`LeaderboardError`."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise LeaderboardError(f"{key} must be a percentage string such as '57.14', got {text!r}")
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


def _typed(d: Mapping[str, Any], key: str, tp: Any, what: str) -> Any:
    """``d[key]`` checked against ``tp`` (see :func:`robustmoe_bench.config.type_problem`); absent = ``None``."""
    from ..config import type_problem

    v = d.get(key)
    problem = type_problem(v, tp)
    if problem:
        text = repr(v)
        raise LeaderboardError(f"{what}: {key!r} {problem}, got {text if len(text) <= 60 else text[:57] + '...'}")
    return v


@dataclass(frozen=True)
class MoEExtras:
    """What RobustBench has no key for: how the model was built and trained, its cost, the rest of the
    evaluation. Percentages are 0-100 floats; ``None`` means not applicable or not measured.

    Uncertainty and detail (optional, written by this version): ``n_total`` (the test-set size the
    ``n_examples`` were drawn from), ``intervals`` (``{"clean_acc" | "autoattack_acc" |
    "worst_case_acc" | "pgd50_acc": (low, high)}``, 95 % Wilson, in %), ``attacks`` (``{attack:
    (accuracy in the cascade, accuracy alone or None)}``) and ``flags`` (``{check: (passed, evidence)}``)."""

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
    n_total: Optional[int] = None
    intervals: Optional[dict[str, tuple[float, float]]] = None
    attacks: Optional[dict[str, tuple[Optional[float], Optional[float]]]] = None
    flags: Optional[dict[str, tuple[bool, str]]] = None
    moe: Optional[str] = None  # full-copy expert design ("conv", "block"); None for channel-slice experts
    k: Optional[int] = None  # experts per input of a full-copy design's top-k gate
    #: routing health on the evaluated clean examples (``ExpertUse.to_dict()`` of the results; None for a
    #: dense model or results written before it was recorded)
    expert_use: Optional[dict[str, Any]] = None

    @property
    def collapsed(self) -> Optional[bool]:
        """True when the MoE routed (almost) every evaluated input to one expert in some MoE layer; None when
        its routing health is not recorded (or the model has no routing)."""
        return None if self.expert_use is None else bool(self.expert_use["collapsed"])

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
        if self.n_total is not None:
            items.append(("n_total", self.n_total))
        if self.intervals is not None:
            items.append(("intervals", {k: [format_acc(lo), format_acc(hi)] for k, (lo, hi) in self.intervals.items()}))
        if self.attacks is not None:
            items.append(("attacks", {k: {"cascade": acc(c), "alone": acc(a)} for k, (c, a) in self.attacks.items()}))
        if self.flags is not None:
            items.append(("flags", {k: {"passed": bool(p), "evidence": str(ev)} for k, (p, ev) in self.flags.items()}))
        if self.moe is not None:
            items += [("moe", self.moe), ("k", self.k)]
        if self.expert_use is not None:
            items.append(("expert_use", {k: self.expert_use[k] for k in EXPERT_USE_KEYS}))
        return {EXTRA_PREFIX + k: v for k, v in items}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> Optional["MoEExtras"]:
        """The extras of an entry dict, or ``None`` for a plain RobustBench entry (no ``robustmoe_*`` keys).
        Every value must have its documented JSON type (:class:`LeaderboardError` otherwise)."""
        if not any(k.startswith(EXTRA_PREFIX) for k in d):
            return None
        what = "robustmoe extras"
        g = lambda k, tp: _typed(d, EXTRA_PREFIX + k, tp, what)  # noqa: E731
        opt_acc = lambda k: None if g(k, Optional[str]) is None else parse_acc(g(k, str), EXTRA_PREFIX + k)  # noqa: E731
        rr = g("router_robustness", Optional[dict[str, str]])
        iv = g("intervals", Optional[dict[str, list[str]]])
        if iv is not None and any(len(v) != 2 for v in iv.values()):
            raise LeaderboardError(f"{what}: each interval must be [low, high]")
        atk = g("attacks", Optional[dict[str, dict[str, Optional[str]]]])
        flags = g("flags", Optional[dict[str, dict[str, Any]]])
        if flags is not None:
            for k, f in flags.items():
                if not isinstance(f.get("passed"), bool) or not isinstance(f.get("evidence"), str):
                    raise LeaderboardError(f"{what}: flag {k!r} needs 'passed' (true/false) and 'evidence' (text)")
        kind = g("kind", str)
        if kind is None:
            raise LeaderboardError(f"{what}: {EXTRA_PREFIX}kind is missing")
        use = _expert_use_of(g("expert_use", Optional[dict[str, Any]]), what)
        return cls(
            method=g("method", Optional[str]), kind=kind, arch=g("arch", Optional[str]) or "?",
            experts=g("experts", Optional[int]), scale=g("scale", Optional[float]),
            router=g("router", Optional[str]), gflops_pathway=g("gflops_pathway", Optional[float]),
            gflops_router=g("gflops_router", Optional[float]), gflops_total=g("gflops_total", Optional[float]),
            pgd50_acc=opt_acc("pgd50_acc"),
            worst_case_acc=parse_acc(g("worst_case_acc", str), EXTRA_PREFIX + "worst_case_acc"),
            router_robustness=None if rr is None else {k: parse_acc(v, f"router robustness {k}") for k, v in rr.items()},
            suite=g("suite", Optional[str]) or "?", n_examples=g("n_examples", Optional[int]) or 0,
            failed_checks=tuple(g("failed_checks", Optional[list[str]]) or ()),
            autoattack_after=tuple(g("autoattack_after", Optional[list[str]]) or ()),
            checkpoint_sha256=g("checkpoint_sha256", Optional[str]), package_version=g("package_version", Optional[str]),
            n_total=g("n_total", Optional[int]),
            intervals=None if iv is None else {k: (parse_acc(v[0], f"interval {k}"), parse_acc(v[1], f"interval {k}"))
                                               for k, v in iv.items()},
            attacks=None if atk is None else {
                k: (None if v.get("cascade") is None else parse_acc(v["cascade"], f"attack {k}"),
                    None if v.get("alone") is None else parse_acc(v["alone"], f"attack {k} alone"))
                for k, v in atk.items()},
            flags=None if flags is None else {k: (f["passed"], f["evidence"]) for k, f in flags.items()},
            moe=g("moe", Optional[str]), k=g("k", Optional[int]), expert_use=use,
        )


#: RobustBench's keys of corruption entries (``<dataset>/corruptions/*.json``), percentages.
CORRUPTION_KEYS = ("corruptions_acc", "corruptions_mce", "corruptions_acc_3d", "corruptions_mce_3d")
#: What RobustBench's own files write for "no reported number" (``""``, ``null``, and once ``"null"``).
NOT_REPORTED = ("", None, "null")


@dataclass(frozen=True)
class LeaderboardEntry:
    """One leaderboard row. ``name`` is RobustBench's ``name`` key: the paper's title (the model ID is
    the file name). Accuracies are 0-100 floats.

    ``autoattack_acc`` and ``eps`` are ``None`` only for corruption entries (RobustBench's files have
    ``eps: null`` and ``corruptions_acc`` there instead); ``reported`` is ``None`` where the authors
    reported nothing (``""`` or ``null`` in RobustBench's files)."""

    dataset: BenchmarkDataset
    threat_model: ThreatModel
    eps: Optional[float]
    clean_acc: float
    autoattack_acc: Optional[float]
    reported: Optional[float]
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
    corruptions: dict[str, float] = field(default_factory=dict)

    @property
    def eps_str(self) -> str:
        return "" if self.eps is None else format_entry_eps(self.eps, self.threat_model)

    @property
    def ranking_acc(self) -> float:
        """The number RobustBench ranks by: ``external`` if present, else ``autoattack_acc`` (corruption
        entries: ``corruptions_acc``)."""
        if self.external is not None:
            return self.external
        if self.autoattack_acc is not None:
            return self.autoattack_acc
        return self.corruptions.get("corruptions_acc", 0.0)

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
            "eps": self.eps_str if self.eps is not None else None,
            "clean_acc": format_acc(self.clean_acc),
            "reported": "" if self.reported is None else format_acc(self.reported),
        }
        if self.autoattack_acc is not None:
            d["autoattack_acc"] = format_acc(self.autoattack_acc)
        if self.external is not None:
            d["external"] = format_acc(self.external)
        for k in CORRUPTION_KEYS:
            if k in self.corruptions:
                d[k] = format_acc(self.corruptions[k])
        d["footnote"] = self.footnote
        d["unreliable"] = bool(self.unreliable)
        if self.extras is not None:
            d.update(self.extras.to_json_dict())
        return d

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any], threat_model: ThreatModel | str) -> "LeaderboardEntry":
        """Parse an entry as stored on disk (the threat model comes from its folder). Values must have
        RobustBench's JSON types; a wrong one raises :class:`LeaderboardError` naming the key."""
        tm = threat_model if isinstance(threat_model, ThreatModel) else ThreatModel.parse(threat_model)
        if not isinstance(d, Mapping):
            raise LeaderboardError("an entry must be a JSON object")
        what = "entry"
        try:
            eps_text = d["eps"]
            if eps_text is None and tm is ThreatModel.corruptions:
                eps = None
            else:
                if not isinstance(eps_text, str):
                    raise LeaderboardError(f"eps must be a string such as '8/255', got {eps_text!r}")
                try:
                    eps = parse_eps(eps_text, norm=tm.value if tm is not ThreatModel.corruptions else "Linf")
                except ConfigError as e:
                    raise LeaderboardError(f"eps: {e}") from None
            ext = d.get("external")
            aa = d.get("autoattack_acc")
            if aa is None and tm is not ThreatModel.corruptions:
                raise KeyError("autoattack_acc")
            corr = {k: parse_acc(d[k], k) for k in CORRUPTION_KEYS if d.get(k) is not None}
            if tm is ThreatModel.corruptions and "corruptions_acc" not in corr:
                raise KeyError("corruptions_acc")
            rep = d["reported"]
            name = _typed(d, "name", str, what)
            if name is None:
                raise KeyError("name")
            return cls(
                dataset=BenchmarkDataset.parse(_typed(d, "dataset", str, what) or ""),
                threat_model=tm,
                eps=eps,
                clean_acc=parse_acc(d["clean_acc"], "clean_acc"),
                autoattack_acc=None if aa is None else parse_acc(aa, "autoattack_acc"),
                reported=None if rep in NOT_REPORTED else parse_acc(rep, "reported"),
                name=name,
                link=_typed(d, "link", Optional[str], what) or "",
                authors=_typed(d, "authors", Optional[str], what) or "",
                venue=_typed(d, "venue", Optional[str], what) or "",
                architecture=_typed(d, "architecture", Optional[str], what) or "",
                additional_data=bool(_typed(d, "additional_data", Optional[bool], what)),
                number_forward_passes=_typed(d, "number_forward_passes", Optional[int], what) or 1,
                external=None if ext is None else parse_acc(ext, "external"),
                footnote=_typed(d, "footnote", Optional[str], what),
                unreliable=bool(_typed(d, "unreliable", Optional[bool], what)),
                extras=MoEExtras.from_json_dict(d),
                corruptions=corr,
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


#: The routing-health fields an entry carries (see :class:`~robustmoe_bench.adapters.expert_use.ExpertUse`).
EXPERT_USE_KEYS = ("n_inputs", "n_experts", "busiest_share", "entropy_normalised", "collapsed")


def _expert_use_of(d: Any, what: str) -> Optional[dict[str, Any]]:
    """The routing-health fields of an expert-use dict (results or an entry), type-checked; None if absent."""
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise LeaderboardError(f"{what}: expert_use must be an object")
    for key, tp in (("n_inputs", int), ("n_experts", int), ("busiest_share", list[float]),
                    ("entropy_normalised", list[float]), ("collapsed", bool)):
        if key not in d:
            raise LeaderboardError(f"{what}: expert_use lacks {key!r}")
        _typed(d, key, tp, f"{what}: expert_use")
    if not d["busiest_share"] or any(not 0 <= float(b) <= 1 for b in d["busiest_share"]):
        raise LeaderboardError(f"{what}: expert_use busiest_share must be shares in [0, 1], one per MoE layer")
    return {"n_inputs": int(d["n_inputs"]), "n_experts": int(d["n_experts"]),
            "busiest_share": [float(b) for b in d["busiest_share"]],
            "entropy_normalised": [float(e) for e in d["entropy_normalised"]], "collapsed": bool(d["collapsed"])}


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


#: Display names of the full-copy expert designs (``ModelSpec.moe``).
TOPK_DESIGN_NAMES = {"conv": "ConvMoE", "block": "BlockMoE"}


def architecture_label(model: Mapping[str, Any]) -> str:
    """A human architecture string from a model-spec dict, e.g. ``"ResNet-18 MoE (N=2, r=0.5, layer router)"``."""
    arch = str(model.get("arch", "?"))
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    base = f"WideResNet-{m.group(1)}-{m.group(2)}" if m else _ARCH_NAMES.get(arch, arch)
    kind = model.get("kind", "dense")
    if kind == "moe" and model.get("moe") in TOPK_DESIGN_NAMES:
        design = TOPK_DESIGN_NAMES[str(model["moe"])]
        return f"{base} {design} (N={model.get('experts')}, top-{model.get('k', 1)})"
    if kind == "moe":
        return f"{base} MoE (N={model.get('experts')}, r={float(model.get('scale', 0)):g}, {model.get('router')} router)"
    if kind == "sdense":
        return f"{base} S-Dense (r={float(model.get('scale', 0)):g})"
    if kind == "sparse":
        return f"{base} Sparse (r={float(model.get('scale', 0)):g})"
    return base


def _percent(results: Mapping[str, Any], value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LeaderboardError(f"results: {what} must be a number, got {value!r}")
    v = float(value)
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
        if not isinstance(flag, Mapping) or not isinstance(flag.get("passed"), bool):
            raise LeaderboardError(
                f"results: flag {name!r} must be an object whose 'passed' is true or false, got {flag!r}"[:200])
        if flag["passed"] is False:
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
    corruptions: Optional[Mapping[str, Any]] = None,
) -> LeaderboardEntry:
    """Build an entry from an evaluation results dict (see docs/DEVELOPING.md for its format).

    Results of ``evaluate --suite corruptions`` give a corruptions entry (RobustBench's
    ``<dataset>/corruptions`` folder: ``corruptions_acc``, no ``eps`` and no AutoAttack). ``corruptions``:
    the corruption results of the same checkpoint, whose ``corruptions_acc`` is added to an Linf/L2 entry.

    Refuses results without an AutoAttack number. ``unreliable`` is true when the results say so or
    any gradient-masking check failed; failed checks and the use of ``external`` are explained in
    the footnote (after any footnote given)."""
    if not isinstance(results, Mapping):
        raise LeaderboardError("results: expected a JSON object (the output of 'robustmoe-bench evaluate')")
    check_link(link)
    for key, value in (("title", title), ("authors", authors), ("venue", venue), ("architecture", architecture),
                       ("footnote", footnote)):
        if value is not None and not isinstance(value, str):
            raise LeaderboardError(f"{key} must be text, got {value!r}")
    if results.get("threat_model") == ThreatModel.corruptions.value:
        if corruptions is not None:
            raise LeaderboardError("--corruptions adds corruption accuracy to an Linf or L2 entry; these results already are corruption results")
        return corruption_entry(results, BenchmarkDataset.parse(_typed(results, "dataset", str, "results")), title=title,
                                link=link, authors=authors, venue=venue, architecture=architecture, footnote=footnote,
                                additional_data=additional_data, number_forward_passes=number_forward_passes)
    missing = [k for k in ("dataset", "threat_model", "eps", "clean_acc", "robust_acc") if k not in results]
    if missing:
        raise LeaderboardError(
            f"results lack {', '.join(missing)}: is this the output of 'robustmoe-bench evaluate --out'?"
        )
    if results.get("estimate"):
        raise LeaderboardError(
            f"results of suite {results.get('suite', '?')!r} are an estimate of AutoAttack, not a measurement; "
            "a leaderboard entry needs AutoAttack itself: evaluate with --suite standard, table1 or full"
        )
    r = "results"
    dataset = BenchmarkDataset.parse(_typed(results, "dataset", str, r))
    tm = ThreatModel.parse(_typed(results, "threat_model", str, r))
    try:
        eps = parse_eps(_typed(results, "eps", float, r), norm=tm.value)
    except ConfigError as e:
        raise LeaderboardError(f"results: {e}") from None
    robust = _typed(results, "robust_acc", dict[str, float], r)
    alone = _typed(results, "robust_acc_alone", Optional[dict[str, float]], r) or {}
    if robust.get("autoattack") is None:
        raise LeaderboardError(
            f"results of suite {results.get('suite', '?')!r} have no AutoAttack number (robust_acc['autoattack']); "
            "a leaderboard entry needs one: evaluate with a suite that runs AutoAttack (e.g. --suite full)"
        )
    for key, tp in (("n_examples", int), ("n_total", Optional[int]), ("suite", Optional[str]),
                    ("unreliable", Optional[bool]), ("checkpoint_sha256", Optional[str]),
                    ("package_version", Optional[str]), ("model", Optional[dict[str, Any]]),
                    ("training", Optional[dict[str, Any]]), ("gflops", Optional[dict[str, Optional[float]]]),
                    ("intervals", Optional[dict[str, Any]]), ("attacks", Optional[list[dict[str, Any]]]),
                    ("worst_case_attacks", Optional[list[str]])):
        _typed(results, key, tp, r)
    if results["n_examples"] < 1:
        raise LeaderboardError(f"results: 'n_examples' must be positive, got {results['n_examples']!r}")
    clean = _percent(results, results["clean_acc"], "clean_acc")
    aa_cascade = _percent(results, robust["autoattack"], "robust_acc['autoattack']")
    # RobustBench's autoattack_acc is AutoAttack alone; results that measured it say so in robust_acc_alone.
    aa = _percent(results, alone["autoattack"], "robust_acc_alone['autoattack']") if "autoattack" in alone else aa_cascade
    worst = _percent(results, robust.get("worst_case", aa), "robust_acc['worst_case']")
    if worst > aa + 1e-9 or aa_cascade > aa + 1e-9:
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
    aa_after = () if "autoattack" in alone else attacks_before_autoattack(results)
    unreliable = bool(results.get("unreliable", False)) or bool(failed)

    model = results.get("model") or {}
    kind = _typed(model, "kind", Optional[str], "results: model") or "dense"
    for key, tp in (("arch", Optional[str]), ("experts", Optional[int]), ("scale", Optional[float]),
                    ("router", Optional[str])):
        _typed(model, key, tp, "results: model")
    training = results.get("training") or {}
    method = _typed(training, "method", Optional[str], "results: training")
    gflops = results.get("gflops") or {}
    rr = _typed(results, "router_robustness", Optional[dict[str, float]], r)
    suite = results.get("suite") or "?"
    n = results["n_examples"]

    def g(key: str) -> Optional[float]:
        v = gflops.get(key)
        return None if v is None else float(v)

    from ..stats import count_of, wilson

    def ci(v: Optional[float]) -> Optional[tuple[float, float]]:
        if v is None:
            return None
        iv = wilson(min(n, max(0, count_of(v, n))), n)
        return (round(iv.low, 2), round(iv.high, 2))

    intervals = {k: v for k, v in (("clean_acc", ci(clean)), ("autoattack_acc", ci(aa)), ("worst_case_acc", ci(worst)),
                                   ("pgd50_acc", ci(pgd50))) if v is not None}
    per_attack: dict[str, tuple[Optional[float], Optional[float]]] = {}
    for a in results.get("attacks") or []:
        name = _typed(a, "name", str, "results: attack")
        if _typed(a, "skipped", Optional[str], "results: attack") is not None:
            continue
        c = _typed(a, "robust_acc", Optional[float], "results: attack")
        al = _typed(a, "robust_acc_alone", Optional[float], "results: attack")
        per_attack[name] = (None if c is None else _percent(results, c, f"attack {name}"),
                            None if al is None else _percent(results, al, f"attack {name} alone"))
    for grp, v in alone.items():
        if grp not in per_attack and grp in robust:
            per_attack[grp] = (_percent(results, robust[grp], grp), _percent(results, v, f"{grp} alone"))
    flags = {str(k): (f["passed"], str(f.get("evidence", ""))) for k, f in (results.get("flags") or {}).items()}

    topk = kind == "moe" and model.get("moe") in TOPK_DESIGN_NAMES
    extras = MoEExtras(
        method=method,
        kind=kind,
        arch=str(model.get("arch") or "?"),
        experts=int(model["experts"]) if kind == "moe" and model.get("experts") is not None else None,
        scale=float(model["scale"]) if kind != "dense" and model.get("scale") is not None else None,
        router=str(model["router"]) if kind == "moe" and model.get("router") is not None else None,
        gflops_pathway=g("pathway"),
        gflops_router=g("router"),
        gflops_total=g("total"),
        pgd50_acc=pgd50,
        worst_case_acc=worst,
        router_robustness=None if rr is None else {str(k): _percent(results, v, f"router_robustness[{k!r}]") for k, v in rr.items()},
        suite=suite,
        n_examples=n,
        failed_checks=failed,
        autoattack_after=aa_after,
        checkpoint_sha256=results.get("checkpoint_sha256"),
        package_version=results.get("package_version"),
        n_total=results.get("n_total"),
        intervals=intervals,
        attacks=per_attack or None,
        flags=flags or None,
        moe=str(model["moe"]) if topk else None,
        k=int(model.get("k") or 1) if topk else None,
        expert_use=_expert_use_of(results.get("expert_use"), "results") if kind == "moe" else None,
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
            f"({attacks}) on {extras.n_examples} test points; autoattack_acc is AutoAttack"
            + (" alone." if not aa_after else " in that cascade.")
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
    corr: dict[str, float] = {}
    if corruptions is not None:
        corr["corruptions_acc"] = _corruptions_acc(corruptions, results, dataset)
        notes.append(_corruption_note(corruptions))
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
        corruptions=corr,
    )


def _corruption_note(c: Mapping[str, Any]) -> str:
    sev = c.get("severities") or [1, 2, 3, 4, 5]
    names = c.get("corruptions") or []
    return (f"corruptions_acc: mean accuracy over {len(names)} common corruptions x {len(sev)} severities "
            f"(robustmoe-bench --suite corruptions, ImageNet-C style; procedural frost) on {c.get('n_examples')} test points.")


def _corruptions_acc(c: Mapping[str, Any], results: Mapping[str, Any], dataset: BenchmarkDataset) -> float:
    """The corruption accuracy of corruption results ``c`` for the checkpoint evaluated in ``results``."""
    if not isinstance(c, Mapping) or c.get("suite") != "corruptions":
        raise LeaderboardError("corruption results: expected the output of 'robustmoe-bench evaluate --suite corruptions'")
    if BenchmarkDataset.parse(_typed(c, "dataset", str, "corruption results")) is not dataset:
        raise LeaderboardError(f"corruption results are on {c.get('dataset')}, the entry on {dataset.value}")
    a, b = c.get("checkpoint_sha256"), results.get("checkpoint_sha256")
    if a is not None and b is not None and a != b:
        raise LeaderboardError("corruption results are of a different checkpoint (checkpoint_sha256 differs)")
    return _percent(c, _typed(c, "corruptions_acc", float, "corruption results"), "corruptions_acc")


def corruption_entry(results: Mapping[str, Any], dataset: BenchmarkDataset, *, title: str, link: str = "",
                     authors: str = "", venue: str = "N/A", architecture: Optional[str] = None,
                     footnote: Optional[str] = None, additional_data: bool = False,
                     number_forward_passes: int = 1) -> LeaderboardEntry:
    """A corruptions entry from the results of ``evaluate --suite corruptions``."""
    acc = _corruptions_acc(results, results, dataset)
    clean = _percent(results, _typed(results, "clean_acc", float, "results"), "clean_acc")
    model = _typed(results, "model", Optional[dict[str, Any]], "results") or {}
    notes = ([footnote] if footnote else []) + [_corruption_note(results)]
    return LeaderboardEntry(
        dataset=dataset, threat_model=ThreatModel.corruptions, eps=None, clean_acc=clean, autoattack_acc=None,
        reported=None, name=title, link=link, authors=authors, venue=venue,
        architecture=architecture if architecture else architecture_label(model), additional_data=additional_data,
        number_forward_passes=number_forward_passes, footnote="<br>".join(notes), unreliable=False, extras=None,
        corruptions={"corruptions_acc": acc},
    )
