"""The model zoo: named, checksummed models with the results behind their leaderboard entries.

A zoo is a registry (JSON) plus a folder of weight files:

- the packaged zoo: ``robustmoe_bench/zoo_registry.json``, weights in the repository's ``model_zoo/``
  folder (``$ROBUSTMOE_ZOO=DIR`` replaces it with the zoo at ``DIR``);
- any other zoo: a folder ``DIR`` holding ``DIR/registry.json`` and the weight files.

Each model records its weight file (relative to the zoo folder) or a URL, the file's sha256, its model
spec and training metadata, and optionally the evaluation results and leaderboard entry behind it.
Format: ``model_zoo/README.md``.

Every load verifies the sha256 *before* the file is parsed; a mismatch is a
:class:`~robustmoe_bench.errors.CheckpointError` naming both digests. Nothing is fetched from the
network unless asked (``download=True`` / ``--download``); downloads are verified before they are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import typing
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .checkpoint import Checkpoint, atomic_write_bytes, load_checkpoint
from .errors import CheckpointError, RobustMoEError
from .leaderboard.entry import LeaderboardError, check_name
from . import jsonsafe

REGISTRY_VERSION = 1
PACKAGED_REGISTRY = Path(__file__).with_name("zoo_registry.json")
PACKAGED_FILES = Path(__file__).resolve().parent.parent / "model_zoo"
ZOO_ENV = "ROBUSTMOE_ZOO"
CACHE_ENV = "ROBUSTMOE_CACHE"
WEIGHTS_SUFFIX = ".safetensors"


#: Where hosted weights may come from (file:// for local mirrors); never other schemes.
URL_SCHEMES = ("https://", "http://", "file://")


class ZooError(RobustMoEError):
    """A zoo request cannot be served: unknown name, missing weights, bad registry, refused download."""


@dataclass(frozen=True)
class ZooModel:
    """One registry record. Exactly one of ``file`` (relative to the zoo folder) and ``url`` is set."""

    name: str
    sha256: str
    size_bytes: int
    model: dict[str, Any]
    file: Optional[str] = None
    url: Optional[str] = None
    training: dict[str, Any] = field(default_factory=dict)
    results: Optional[dict[str, Any]] = None
    leaderboard: Optional[str] = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["name"]  # the registry key
        return d

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "ZooModel":
        try:  # the name becomes part of file names (the download cache): it must stay inside its folder
            check_name(name, "zoo model name")
        except LeaderboardError as e:
            raise ZooError(f"zoo registry: {e}") from None
        if not isinstance(d, dict):
            raise ZooError(f"zoo registry: model {name!r} must be an object")
        allowed = {f for f in cls.__dataclass_fields__ if f != "name"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ZooError(f"zoo registry: model {name!r} has unknown key(s) {', '.join(unknown)}")
        from .config import type_problem

        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            problem = type_problem(v, hints[k])
            if problem:
                raise ZooError(f"zoo registry: model {name!r}: {k!r} {problem}, got {v!r}"[:300])
        try:
            m = cls(name=name, **d)
        except TypeError as e:
            raise ZooError(f"zoo registry: model {name!r}: {e}") from None
        if (m.file is None) == (m.url is None):
            raise ZooError(f"zoo registry: model {name!r} needs exactly one of 'file' and 'url'")
        if m.url is not None and not m.url.startswith(URL_SCHEMES):
            raise ZooError(f"zoo registry: model {name!r}: url must start with {', '.join(URL_SCHEMES)}, got {m.url!r}")
        if not (isinstance(m.sha256, str) and len(m.sha256) == 64 and all(c in "0123456789abcdef" for c in m.sha256)):
            raise ZooError(f"zoo registry: model {name!r} has a malformed sha256 {m.sha256!r}")
        if m.file is not None:
            if not m.file.endswith(WEIGHTS_SUFFIX):
                raise ZooError(f"zoo registry: model {name!r}: file {m.file!r} must end with {WEIGHTS_SUFFIX}")
            try:
                check_name(m.file, "weight file name")
            except LeaderboardError as e:  # a path that could leave the zoo folder
                raise ZooError(f"zoo registry: model {name!r}: {e}") from None
        return m

    @property
    def routing_health(self) -> str:
        """The recorded results' expert use: ``busiest 55%`` (the busiest expert's share, highest over the
        MoE layers), ``COLLAPSED (busiest 100%)``, ``not recorded`` (MoE results that predate it), or
        empty for a model without routing or without results."""
        if str(self.model.get("kind")) != "moe" or not self.results:
            return ""
        use = self.results.get("expert_use")
        if not isinstance(use, dict) or not use.get("busiest_share"):
            return "not recorded"
        busiest = f"busiest {100 * max(use['busiest_share']):.0f}%"
        return f"COLLAPSED ({busiest})" if use.get("collapsed") else busiest

    @property
    def headline(self) -> str:
        """``clean x%, AutoAttack y%, worst case z%`` from the recorded results (or ``no results``).

        AutoAttack is AutoAttack *alone* where the results record it (``robust_acc_alone``), as on the
        leaderboard; ``robust_acc["autoattack"]`` is the cascade's cumulative figure after the attacks
        that ran before it, which for a suite with router attacks is already the worst case."""
        r = self.results
        if not r:
            return "no results"
        ra = dict(r.get("robust_acc") or {})
        alone = (r.get("robust_acc_alone") or {}).get("autoattack")
        if isinstance(alone, (int, float)):
            ra["autoattack"] = alone
        parts = [f"clean {r['clean_acc']:.2f}%"] if isinstance(r.get("clean_acc"), (int, float)) else []
        for key, label in (("autoattack", "AutoAttack"), ("worst_case", "worst case")):
            if isinstance(ra.get(key), (int, float)):
                parts.append(f"{label} {ra[key]:.2f}%")
        eps = r.get("eps_str") or r.get("eps")
        return ", ".join(parts) + (f" ({r.get('threat_model', '?')}, eps={eps}, suite {r.get('suite', '?')})" if parts else "")


@dataclass(frozen=True)
class Zoo:
    """Where a zoo lives: its registry file and the folder its ``file`` entries are relative to."""

    registry_path: Path
    files_dir: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> "Zoo":
        root = Path(root).expanduser()
        return cls(root / "registry.json", root)

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> "Zoo":
        """``root`` if given, else ``$ROBUSTMOE_ZOO``, else the packaged zoo."""
        if root is not None:
            return cls.at(root)
        env = os.environ.get(ZOO_ENV)
        if env:
            return cls.at(env)
        return cls(PACKAGED_REGISTRY, PACKAGED_FILES)


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$ROBUSTMOE_CACHE/zoo`` or ``~/.cache/robustmoe-bench/zoo``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "robustmoe-bench") / "zoo"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the registry --------------------------------------------------------------------------------

def _parse_registry(text: str, path: Path) -> dict[str, ZooModel]:
    try:
        data = jsonsafe.loads(text)
    except json.JSONDecodeError as e:
        raise ZooError(f"zoo registry {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ZooError(f"zoo registry {path} must be an object with a 'models' object")
    version = data.get("schema_version")
    if version != REGISTRY_VERSION:
        raise ZooError(f"zoo registry {path} has schema_version {version!r}; this robustmoe-bench reads {REGISTRY_VERSION}")
    return {name: ZooModel.from_dict(name, d) for name, d in sorted(data["models"].items())}


def read_registry(zoo: Zoo) -> dict[str, ZooModel]:
    """All models of ``zoo`` by name (an absent registry file is an empty zoo)."""
    try:
        text = zoo.registry_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ZooError(f"cannot read zoo registry {zoo.registry_path}: {e}") from None
    return _parse_registry(text, zoo.registry_path)


def _registry_bytes(models: dict[str, ZooModel]) -> bytes:
    data = {"schema_version": REGISTRY_VERSION, "models": {n: models[n].to_dict() for n in sorted(models)}}
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


@contextmanager
def _locked_registry(zoo: Zoo) -> Iterator[dict[str, ZooModel]]:
    """Hold an exclusive lock on the registry file while it is read, changed and replaced.

    The registry is replaced by rename, so the lock is taken on the current file and re-taken if the
    file was swapped while waiting. Yields the models; the caller mutates the dict; it is written back
    (atomically) when the block exits without an error."""
    import fcntl

    path = zoo.registry_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # A new zoo: put a complete empty registry in place without overwriting one another process
        # created meanwhile (os.link fails if the name exists; readers never see a partial file).
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_registry_bytes({}))
            os.chmod(tmp, 0o644)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    while True:
        f = open(path, "rb")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # replaced while we waited: lock the new file
            models = _parse_registry(f.read().decode("utf-8"), path)
            yield models
            atomic_write_bytes(path, _registry_bytes(models))
            return
        finally:
            f.close()


def zoo_models(root: str | os.PathLike[str] | None = None) -> list[ZooModel]:
    """The models of a zoo (default: the packaged one), sorted by name."""
    return list(read_registry(Zoo.resolve(root)).values())


def get_zoo_model(name: str, root: str | os.PathLike[str] | None = None) -> ZooModel:
    """One model's record; an unknown name raises :class:`ZooError` listing the known names."""
    zoo = Zoo.resolve(root)
    models = read_registry(zoo)
    if name not in models:
        raise ZooError(
            f"unknown zoo model {name!r}; known: {', '.join(models) or '(none: the zoo is empty)'} "
            f"(registry {zoo.registry_path})"
        )
    return models[name]


# --- weights: locate, fetch, verify ------------------------------------------------------------------

def _mismatch(m: ZooModel, path: Path, actual: str) -> CheckpointError:
    return CheckpointError(
        f"sha256 mismatch for zoo model {m.name!r} ({path}): expected {m.sha256}, got {actual}; "
        "the file is corrupt or was replaced, refusing to load it"
    )


def _download(m: ZooModel, dest: Path) -> None:
    """Fetch ``m.url`` to ``dest``, verifying the sha256 before the file is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(m.url, timeout=60) as resp:  # noqa: S310 -- explicit user request
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise ZooError(f"cannot download zoo model {m.name!r} from {m.url}: {e}") from None
        if h.hexdigest() != m.sha256:
            raise CheckpointError(
                f"sha256 mismatch for zoo model {m.name!r} downloaded from {m.url}: expected {m.sha256}, "
                f"got {h.hexdigest()}; the download was discarded"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def weights_path(m: ZooModel, root: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """Local path of ``m``'s weights (not yet verified). A URL model is fetched only with ``download``."""
    zoo = Zoo.resolve(root)
    if m.file is not None:
        path = zoo.files_dir / m.file
        if path.is_file():
            return path
        # An installed wheel ships the registry but not the model_zoo/ folder of the source tree: the
        # packaged zoo's weights are then looked for in the cache folder.
        cached = cache_dir() / m.file
        if zoo.registry_path == PACKAGED_REGISTRY and cached.is_file():
            return cached
        where = f"{path} or {cached}" if zoo.registry_path == PACKAGED_REGISTRY else str(path)
        raise ZooError(
            f"weights of zoo model {m.name!r} not found at {where}"
            + ("; an installed package has no model_zoo/ folder: put the file (from the source tree's "
               f"model_zoo/) in {cache_dir()} (set {CACHE_ENV} to choose the cache folder)"
               if zoo.registry_path == PACKAGED_REGISTRY else "")
        )
    path = cache_dir() / f"{m.name}-{m.sha256[:16]}{WEIGHTS_SUFFIX}"
    if path.is_file():
        return path
    if not download:
        raise ZooError(
            f"zoo model {m.name!r} is hosted at {m.url} ({m.size_bytes:,} bytes) and is not downloaded; "
            "nothing is fetched unless asked: pass download=True (CLI: --download)"
        )
    _download(m, path)
    return path


def verify(m: ZooModel, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` has ``m``'s sha256."""
    actual = sha256_file(path)
    if actual != m.sha256:
        raise _mismatch(m, path, actual)


def weights_status(m: ZooModel, root: str | os.PathLike[str] | None = None) -> str:
    """``ok``, ``MISMATCH``, ``missing`` or ``not downloaded`` (never downloads)."""
    try:
        path = weights_path(m, root)
    except ZooError:
        return "not downloaded" if m.url is not None else "missing"
    return "ok" if sha256_file(path) == m.sha256 else "MISMATCH"


def load_zoo_checkpoint(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    map_location: str = "cpu",
) -> Checkpoint:
    """Load a zoo model as a :class:`~robustmoe_bench.checkpoint.Checkpoint` (model + metadata),
    after verifying its sha256."""
    m = get_zoo_model(name, root)
    path = weights_path(m, root, download=download)
    verify(m, path)
    ckpt = load_checkpoint(path, map_location=map_location)
    if _canonical(ckpt.meta.get("model")) != _canonical(m.model):
        raise CheckpointError(f"zoo model {name!r}: the checkpoint's model spec differs from the registry's")
    return ckpt


def load_model(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    map_location: str = "cpu",
):
    """The zoo model ``name`` (eval mode), its weights' sha256 verified before loading.

    ``root``: a zoo folder (default: ``$ROBUSTMOE_ZOO`` or the packaged zoo). ``download``: allow
    fetching a URL-hosted model (verified before it is kept). Example::

        model = robustmoe_bench.load_model("fmnist-advmoe")
        logits = model(x)  # x [B, 1, 28, 28] in [0, 1]
    """
    return load_zoo_checkpoint(name, root, download=download, map_location=map_location).model


# --- adding models -------------------------------------------------------------------------------------

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


def _check_results(results: dict[str, Any], sha: str, spec: dict[str, Any], ckpt: Path) -> None:
    """The results must be about this checkpoint: same sha256 (when recorded) and model spec, and measured
    (not the ``screen`` suite's estimate)."""
    if results.get("estimate"):
        raise ZooError(f"the results are an estimate (suite {results.get('suite', '?')!r}); "
                       "the zoo records measured results: evaluate with --suite standard, table1 or full")
    recorded = results.get("checkpoint_sha256")
    if recorded is not None and recorded != sha:
        raise ZooError(
            f"the results were computed on a different checkpoint (sha256 {recorded}) than {ckpt} ({sha})"
        )
    if results.get("model") is not None and _canonical(results["model"]) != _canonical(spec):
        raise ZooError(f"the results describe a different model than {ckpt} (model specs differ)")


def register_zoo_model(
    name: str,
    ckpt: str | os.PathLike[str],
    results_json: str | os.PathLike[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    url: Optional[str] = None,
    description: str = "",
    leaderboard: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ZooModel:
    """Add a checkpoint to a zoo: copy it to ``<zoo>/<name>.safetensors`` (or, with ``url``, record
    where it is hosted instead), compute its sha256, and record its model spec, training metadata,
    evaluation results and leaderboard entry. An existing name needs ``force``."""
    from .leaderboard.publish import read_results

    check_name(name, "zoo model name")
    ckpt = Path(ckpt)
    loaded = load_checkpoint(ckpt)  # refuse anything that is not a loadable checkpoint
    spec = loaded.meta["model"]
    sha = sha256_file(ckpt)
    results = read_results(results_json) if results_json is not None else None
    if results is not None:
        _check_results(results, sha, spec, ckpt)
    lb = None
    if leaderboard is not None:
        lb_path = Path(leaderboard)
        if not lb_path.is_file():
            raise ZooError(f"leaderboard entry not found: {lb_path}")
        try:
            jsonsafe.loads(lb_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ZooError(f"leaderboard entry {lb_path} is not valid JSON") from None
        lb = lb_path.as_posix()
    if url is not None and not url.startswith(URL_SCHEMES):
        raise ZooError(f"url must start with https://, http:// or file://, got {url!r}")

    zoo = Zoo.resolve(root)
    record = ZooModel(
        name=name, sha256=sha, size_bytes=ckpt.stat().st_size, model=spec,
        file=None if url else name + WEIGHTS_SUFFIX, url=url, training=loaded.meta.get("training") or {},
        results=results, leaderboard=lb, description=description,
    )
    with _locked_registry(zoo) as models:
        if name in models and not force:
            raise ZooError(f"zoo model {name!r} already exists in {zoo.registry_path}; pass --force to replace it")
        if record.file is not None:
            zoo.files_dir.mkdir(parents=True, exist_ok=True)
            dest = zoo.files_dir / record.file
            if not (dest.exists() and dest.resolve() == ckpt.resolve()):
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=zoo.files_dir)
                os.close(fd)
                try:
                    shutil.copyfile(ckpt, tmp)
                    if sha256_file(tmp) != sha:  # the source changed while we copied
                        raise ZooError(f"{ckpt} changed while it was being copied; try again")
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, dest)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        models[name] = record
    return record
