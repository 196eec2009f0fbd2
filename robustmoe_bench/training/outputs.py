"""A training run's folder: refusing to overwrite another run, and writing ``config.json``,
``metrics.jsonl`` and ``trajectory.png`` atomically."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError
from .config import TrainConfig

CONFIG, METRICS, CKPT, STATE, PLOT = "config.json", "metrics.jsonl", "ckpt.pt", "state.safetensors", "trajectory.png"


def read_config(out_dir: Path) -> TrainConfig:
    """The configuration stored in a run folder (for ``--resume``)."""
    path = out_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{out_dir} holds no training run to resume (no {CONFIG})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable or corrupt: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a training configuration")
    return TrainConfig.from_dict(upgrade_config(data))


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` written before expert layouts existed (no ``layout`` key) as today's fields,
    computing the same run: slice experts, the p(1-p) straight-through estimator, a uniform TRADES start,
    and no MoE options stored for non-MoE methods."""
    if "layout" in data or "method" not in data:
        return data
    from .config import METHOD_KINDS

    data = dict(data)
    data.setdefault("trades_start", "uniform")
    if METHOD_KINDS.get(data["method"]) == "moe":
        data.update(layout="slice", ste="softmax")
        data.setdefault("router", "layer")
    else:
        for k in ("experts", "router"):
            data.pop(k, None)
        if METHOD_KINDS.get(data["method"]) == "dense":
            data.pop("scale", None)
    return data


def check_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    """Refuse a folder that holds a different run, or (without ``resume``) the same run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        if resume:
            raise ConfigError(f"{out_dir} holds no training run to resume")
        return
    if not (out_dir / CONFIG).is_file():
        raise ConfigError(f"{out_dir} is not empty and holds no robustmoe-bench run; choose an empty or new --out")
    stored = read_config(out_dir)
    mine, theirs = cfg.run_identity(), stored.run_identity()
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"{out_dir} already holds a different run (differs in: {', '.join(diff)}); "
                          "choose another --out")
    if not resume:
        raise ConfigError(f"{out_dir} already holds this run; use --resume {out_dir} to continue it")


def write_config(out_dir: Path, cfg: TrainConfig) -> None:
    atomic_write_bytes(out_dir / CONFIG, cfg.to_json().encode())


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the full history (one JSON object per finished epoch)."""
    text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    atomic_write_bytes(out_dir / METRICS, text.encode())


def plot_trajectory(out_dir: Path, history: list[dict[str, Any]], title: str) -> None:
    """Clean and PGD-10 accuracy per epoch (``trajectory.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    ax.plot(ep, [h["clean_acc"] for h in history], marker="o", label="clean")
    ax.plot(ep, [h["pgd10_acc"] for h in history], marker="s", label="PGD-10")
    # Phase boundaries (at-sparse) as thin vertical lines.
    for a, b in zip(history, history[1:]):
        if a.get("phase") != b.get("phase"):
            ax.axvline(a["epoch"] + 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out_dir / PLOT, buf.getvalue())
