"""Shared plotting helpers: one figure style for every analysis, atomic PNG writes, a PNG size reader.

Every figure has a title, labelled axes and (where there is more than one series) a legend; analyses
build on :func:`new_figure` and write with :func:`save_figure`, so a crash never leaves half a PNG.
"""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in tests
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..errors import ConfigError  # noqa: E402

STYLE = {
    "figure.figsize": (6.4, 4.2),
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
}
DPI = 150
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def new_figure(title: str, xlabel: str, ylabel: str, figsize: tuple[float, float] | None = None
               ) -> tuple[Figure, "matplotlib.axes.Axes"]:
    """A figure with one axes in the package style, titled and with labelled axes."""
    with plt.rc_context(STYLE):
        fig = Figure(figsize=figsize or STYLE["figure.figsize"])  # not pyplot: no global figure registry
        ax = fig.add_subplot(1, 1, 1)
        ax.grid(True, alpha=STYLE["grid.alpha"])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=STYLE["axes.titlesize"])
    ax.set_xlabel(xlabel, fontsize=STYLE["axes.labelsize"])
    ax.set_ylabel(ylabel, fontsize=STYLE["axes.labelsize"])
    return fig, ax


def new_axes(ncols: int = 1, figsize: tuple[float, float] | None = None):
    """A figure with ``ncols`` axes side by side in the package style: ``(fig, ax)`` or ``(fig, [ax, ...])``.
    Callers set titles and axis labels themselves (every figure needs them)."""
    with plt.rc_context(STYLE):
        fig = Figure(figsize=figsize or STYLE["figure.figsize"])
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
        for ax in axes:
            ax.grid(True, alpha=STYLE["grid.alpha"])
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    return fig, (axes[0] if ncols == 1 else axes)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"figures are written as PNG; {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_png(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` in pixels from a PNG's IHDR header; raises ``ConfigError`` if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ConfigError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


__all__ = ["new_figure", "save_figure", "check_png", "STYLE"]
