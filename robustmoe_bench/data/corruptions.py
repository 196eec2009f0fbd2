"""The 15 common corruptions of ImageNet-C / CIFAR-10-C (Hendrycks & Dietterich, 2019) at 5 severities,
as batched torch operations on images in [0, 1] (``[B, C, H, W]``, C = 1 or 3).

Why our own implementation and not the ``imagecorruptions`` package: its last release (1.1.2) does not
import with the setuptools in our environment (it needs ``pkg_resources``, removed from setuptools 81+),
works on single RGB uint8 images in numpy (grayscale Fashion-MNIST needs channel juggling; nothing runs
on a GPU or on a batch), and its glass blur is a per-pixel Python loop. The corruptions here are written
from the published definitions and take their severity parameters from the CIFAR-10-C generation
tables (the small-image variant, which suits 28x28 and 32x32 inputs); the operations are vectorised
over the batch.

Where we differ from the reference (so numbers are "ImageNet-C style", not CIFAR-10-C values):

* ``frost``: ImageNet-C blends photographs of frost that it ships as image files; we do not
  redistribute them and blend a procedural ice texture instead (a plasma fractal with thin bright
  crystal streaks, the same blend weights).
* ``motion_blur`` and ``snow``: ImageMagick's motion blur is replaced by a one-sided Gaussian line
  kernel of the same radius and sigma at a random angle.
* ``jpeg_compression`` goes through PIL's JPEG encoder, as the reference; ``pixelate`` uses area
  down-sampling and nearest up-sampling (the reference: PIL's box filter both ways).

Every corruption is deterministic given the ``torch.Generator`` passed in (random draws are made on the
CPU, so the same seed gives the same corrupted images on any device).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
#: name -> fn(x [B, C, H, W] in [0, 1], severity 1..5, generator) -> corrupted x
CORRUPTIONS: Registry[Callable[[Tensor, int, torch.Generator], Tensor]] = Registry("corruption")
#: the four ImageNet-C families, in the order of the benchmark's tables
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTION_NAMES = tuple(n for f in FAMILIES.values() for n in f)


def _rand(shape, g: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=g).to(like.device, like.dtype)


def _randn(shape, g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=g).to(like.device, like.dtype)


def _uniform(lo: float, hi: float, n: int, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _check(severity: int) -> int:
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be 1-5, got {severity}")
    return severity - 1


# --------------------------------------------------------------------------- filters
def _gauss_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (skimage's ``gaussian``: radius ``int(4 sigma + 0.5)``,
    edge mode ``nearest`` = ``replicate``); ``sigma <= 0`` returns ``x``."""
    if sigma <= 0:
        return x
    k = _gauss_kernel1d(sigma, truncate).to(x.device, x.dtype)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Same-size correlation of every channel with one ``[k, k]`` kernel (reflect-101 borders, as cv2)."""
    k = kernel.to(x.device, x.dtype)
    r = (k.shape[-1] - 1) // 2
    c = x.shape[1]
    return F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k.view(1, 1, *k.shape).expand(c, 1, *k.shape), groups=c)


def _filter_per_image(x: Tensor, kernels: Tensor) -> Tensor:
    """Like :func:`_filter` with one kernel per image: ``kernels`` ``[B, k, k]``."""
    b, c, h, w = x.shape
    k = kernels.to(x.device, x.dtype)
    r = (k.shape[-1] - 1) // 2
    xp = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    weight = k.repeat_interleave(c, dim=0).unsqueeze(1)  # [B*C, 1, k, k]
    return F.conv2d(xp, weight, groups=b * c).view(b, c, h, w)


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """ImageNet-C's defocus kernel: an aliased disk on a 17x17 grid (radius <= 8), normalised, then a
    3x3 Gaussian blur with ``alias_blur`` (anti-aliasing)."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-0.5 * (g / alias_blur) ** 2)
    g /= g.sum()
    out = F.conv2d(F.pad(disk.view(1, 1, *disk.shape), (ksize // 2,) * 4, mode="reflect"),
                   (g.view(-1, 1) * g.view(1, -1)).view(1, 1, ksize, ksize))
    return out[0, 0]


def motion_kernels(radius: int, sigma: float, angles_deg: Tensor) -> Tensor:
    """One-sided Gaussian line kernels ``[B, 2r+1, 2r+1]``: weights ``exp(-t^2 / 2 sigma^2)`` at
    ``t = 0..r`` pixels from the centre along each angle (bilinear splats), normalised."""
    size = 2 * radius + 1
    b = angles_deg.numel()
    k = torch.zeros(b, size, size, dtype=torch.float64)
    t = torch.arange(radius + 1, dtype=torch.float64)
    wt = torch.exp(-t ** 2 / (2 * sigma ** 2))
    a = torch.deg2rad(angles_deg.double()).view(-1, 1)
    px, py = radius + t.view(1, -1) * torch.cos(a), radius + t.view(1, -1) * torch.sin(a)  # [B, r+1]
    x0, y0 = px.floor(), py.floor()
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - (px - xi).abs()) * (1 - (py - yi).abs()) * wt.view(1, -1)
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (w > 0)
            bi = torch.arange(b).view(-1, 1).expand_as(xi)
            k.index_put_((bi[ok], yi[ok].long(), xi[ok].long()), w[ok], accumulate=True)
    return k / k.sum(dim=(1, 2), keepdim=True)


def clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """Zoom ``x`` ``[B, C, H, W]`` by ``zoom >= 1`` about its centre, keeping the size (the centre
    ``ceil(H/zoom)`` crop, bilinearly up-sampled, centre-trimmed)."""
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / zoom)), int(math.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    up = F.interpolate(crop, size=(int(round(ch * zoom)), int(round(cw * zoom))), mode="bilinear", align_corners=False)
    th, tw = (up.shape[-2] - h) // 2, (up.shape[-1] - w) // 2
    return up[..., th:th + h, tw:tw + w]


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, g: torch.Generator) -> Tensor:
    """``n`` diamond-square height maps ``[n, mapsize, mapsize]`` in [0, 1] (``mapsize`` a power of 2)."""
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled(a: Tensor) -> Tensor:
        return a / 4 + wibble * wibble * (2 * torch.rand(a.shape, generator=g, dtype=torch.float64) - 1)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, dims=1)
        sq = sq + sq.roll(-1, dims=2)
        m[:, half::step, half::step] = wibbled(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, dims=1) + ul + ul.roll(-1, dims=2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, dims=2) + ul + ul.roll(-1, dims=1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --------------------------------------------------------------------------- the 15 corruptions
@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[_check(severity)]
    return (x + c * _randn(x.shape, g, x)).clamp(0, 1)


@CORRUPTIONS.register("shot_noise")
def shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (500, 250, 100, 75, 50)[_check(severity)]
    lam = (x.detach().cpu().double() * c)
    return (torch.poisson(lam, generator=g) / c).to(x.device, x.dtype).clamp(0, 1)


@CORRUPTIONS.register("impulse_noise")
def impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[_check(severity)]
    u, s = _rand(x.shape, g, x), _rand(x.shape, g, x)
    hit = u < c  # salt and pepper, half each
    return torch.where(hit, (s < 0.5).to(x.dtype), x)


@CORRUPTIONS.register("defocus_blur")
def defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[_check(severity)]
    return _filter(x, disk_kernel(radius, alias)).clamp(0, 1)


@CORRUPTIONS.register("glass_blur")
def glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[_check(severity)]
    y = (gaussian_blur(x, sigma) * 255).to(torch.uint8).to(x.dtype) / 255  # the reference quantises here
    b, _, h, w = y.shape
    rows = torch.arange(b, device=y.device)
    for _ in range(iterations):
        # the reference's sequential local swaps, bottom-right to top-left, vectorised over the batch
        d = torch.randint(-delta, delta, (h, w, b, 2), generator=g).to(y.device)
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                i2, j2 = i + d[i, j, :, 1], j + d[i, j, :, 0]
                a, c = y[rows, :, i, j].clone(), y[rows, :, i2, j2].clone()
                y[rows, :, i, j], y[rows, :, i2, j2] = c, a
    return gaussian_blur(y, sigma).clamp(0, 1)


@CORRUPTIONS.register("motion_blur")
def motion_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[_check(severity)]
    angles = _uniform(-45, 45, x.shape[0], g)
    return _filter_per_image(x, motion_kernels(radius, sigma, angles)).clamp(0, 1)


@CORRUPTIONS.register("zoom_blur")
def zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[_check(severity)]
    zooms = [1 + 0.01 * i for i in range(int(round((top - 1) / 0.01)))]
    out = x.clone()
    for z in zooms:
        out = out + clipped_zoom(x, z)
    return (out / (len(zooms) + 1)).clamp(0, 1)


@CORRUPTIONS.register("snow")
def snow(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    loc, scale, zoom, thresh, radius, sigma, blend = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))[_check(severity)]
    b, _, h, w = x.shape
    layer = loc + scale * _randn((b, 1, h, w), g, x)
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
    layer = (layer * 255).round() / 255  # the reference stores the layer as an 8-bit image
    layer = _filter_per_image(layer, motion_kernels(radius, sigma, _uniform(-135, -45, b, g)))
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (x + layer + layer.flip(-1, -2)).clamp(0, 1)


@CORRUPTIONS.register("frost")
def frost(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    keep, amount = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[_check(severity)]
    b, c, h, w = x.shape
    size = _pow2(max(h, w))
    # procedural ice: a soft fractal haze plus thin bright streaks at random angles (see module docstring)
    haze = plasma_fractal(b, size, 1.8, g)[:, :h, :w].unsqueeze(1).to(x.device, x.dtype)
    seeds = (_rand((b, 1, h, w), g, x) > 0.93).to(x.dtype)
    streaks = _filter_per_image(seeds, motion_kernels(3, 2.0, _uniform(0, 180, b, g))) * 4
    ice = (0.55 * haze + streaks).clamp(0, 1)
    tint = torch.tensor([0.85, 0.92, 1.0] if c == 3 else [0.92], device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    return (keep * x + amount * ice * tint).clamp(0, 1)


@CORRUPTIONS.register("fog")
def fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    amount, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[_check(severity)]
    b, _, h, w = x.shape
    size = max(32, _pow2(max(h, w)))
    plasma = plasma_fractal(b, size, decay, g)[:, :h, :w].unsqueeze(1).to(x.device, x.dtype)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + amount * plasma) * max_val / (max_val + amount)).clamp(0, 1)


@CORRUPTIONS.register("brightness")
def brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[_check(severity)]
    # HSV value + c with hue and saturation kept: RGB scales by V'/V (V = max channel); black becomes grey c
    v = x.amax(dim=1, keepdim=True)
    v2 = (v + c).clamp(max=1)
    return torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x)).clamp(0, 1)


@CORRUPTIONS.register("contrast")
def contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[_check(severity)]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


@CORRUPTIONS.register("elastic_transform")
def elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    a, s, aff = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[_check(severity)]
    b, _, h, w = x.shape
    size = float(min(h, w))
    alpha, sigma, affine = a * size, s * size, aff * size
    # random affine: three points around the centre moved by up to `affine` pixels
    cy, cx, sq = h // 2, w // 2, min(h, w) // 3
    src = torch.tensor([[cx + sq, cy + sq], [cx - sq, cy + sq], [cx - sq, cy - sq]], dtype=torch.float64)
    dst = src + (2 * torch.rand(b, 3, 2, generator=g, dtype=torch.float64) - 1) * affine
    ones = torch.ones(b, 3, 1, dtype=torch.float64)
    # output pixel p maps to the input pixel q with A [q, 1] = p  (dst = A src): sample at A^-1 p
    coef = torch.linalg.solve(torch.cat([src.expand(b, 3, 2), ones], 2), dst)  # [B, 3, 2]: dst = [src 1] @ coef
    A = torch.cat([coef.transpose(1, 2), torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(A)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)  # [1, HW, 3]
    q = pts @ inv.transpose(1, 2)  # [B, HW, 3]
    qx, qy = q[..., 0].view(b, h, w), q[..., 1].view(b, h, w)
    # smoothed random displacement (the reference's map_coordinates after the affine warp)
    if alpha > 0:
        d = 2 * torch.rand(b, 2, h, w, generator=g, dtype=torch.float64) - 1
        d = gaussian_blur(d, sigma, truncate=3.0, mode="reflect") * alpha
        # displacement is applied in the affine-warped image's coordinates: compose by resampling q
        grid_d = torch.stack([(xx + d[:, 0]) / (w - 1) * 2 - 1, (yy + d[:, 1]) / (h - 1) * 2 - 1], -1)
        qxy = torch.stack([qx, qy], 1)
        qxy = F.grid_sample(qxy, grid_d, mode="bilinear", padding_mode="reflection", align_corners=True)
        qx, qy = qxy[:, 0], qxy[:, 1]
    grid = torch.stack([qx / (w - 1) * 2 - 1, qy / (h - 1) * 2 - 1], -1).to(x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True).clamp(0, 1)


@CORRUPTIONS.register("pixelate")
def pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[_check(severity)]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


@CORRUPTIONS.register("jpeg_compression")
def jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    import io

    import numpy as np
    from PIL import Image

    quality = (80, 65, 58, 50, 40)[_check(severity)]
    u8 = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(torch.from_numpy(dec.copy()).view(img.shape))
    return (torch.stack(out).permute(0, 3, 1, 2).to(x.dtype) / 255).to(x.device)


assert tuple(CORRUPTIONS.names()) == tuple(sorted(CORRUPTION_NAMES)) or set(CORRUPTIONS.names()) == set(CORRUPTION_NAMES)


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """``x`` ``[B, C, H, W]`` in [0, 1] corrupted by ``name`` at ``severity`` (1-5); same shape and range.
    Deterministic for a given ``generator`` state (or ``seed`` when no generator is given)."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTION_NAMES)}")
    _check(severity)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"corruptions take [B, 1 or 3, H, W] images, got shape {tuple(x.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return CORRUPTIONS.get(name)(x, severity, g)


__all__ = ["CORRUPTIONS", "CORRUPTION_NAMES", "FAMILIES", "SEVERITIES", "corrupt", "gaussian_blur", "disk_kernel",
           "motion_kernels", "plasma_fractal", "clipped_zoom"]
