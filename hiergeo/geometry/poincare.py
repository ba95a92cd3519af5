"""Poincaré ball of curvature -c (c > 0) as plain functions of tensors.

Each function works on the last dimension and broadcasts over the others, in any floating
dtype; distances between entity points are meant to be computed in float64. They agree with
``geoopt.PoincareBall(c)`` (tested to 1e-9 in float64).
"""

from __future__ import annotations

import math

import torch

from .constants import MIN_NORM, artanh_clamp, ball_eps


def import_geoopt():
    """geoopt, imported with its import-time warning silenced: geoopt 0.5 runs
    ``torch.jit.script`` on helpers when imported, which torch >= 2.10 reports as deprecated
    (a FutureWarning on every command, about code neither hiergeo nor its user can change).
    Only that message, only during the import."""
    import sys
    import warnings

    if "geoopt" in sys.modules:
        return sys.modules["geoopt"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated",
                                category=FutureWarning)
        import geoopt
    return geoopt


def make_ball(c: float = 1.0):
    """The geoopt manifold for curvature ``-c`` (geoopt's ``c`` argument is the positive one).

    The curvature is stored in float64: geoopt's default float32 ``c`` puts errors of 1e-3 in
    distances near the edge for c != 1. Note that geoopt's ``dist`` saturates at
    ``2 artanh(1 - 1e-7) / sqrt(c)`` (about 16.8 for c = 1) whatever the dtype, while two
    cities in different countries lie ~20 apart: use :func:`dist` for entity distances.
    """
    geoopt = import_geoopt()

    if not c > 0:
        raise ValueError(f"curvature c must be positive (the ball has curvature -c), got {c}")
    return geoopt.PoincareBall(c=torch.tensor(float(c), dtype=torch.float64))


def _norm(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """Norm over the last dimension, at least MIN_NORM. Clamping the squared norm before the
    square root keeps the gradient at the origin finite (``x.norm()`` there gives 0/0)."""
    return (x * x).sum(-1, keepdim=keepdim).clamp_min(MIN_NORM**2).sqrt()


def project(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Pull points back inside the ball's safe radius ``(1 - eps(dtype)) / sqrt(c)``."""
    maxnorm = (1.0 - ball_eps(x.dtype)) / math.sqrt(c)
    norm = _norm(x)
    return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Möbius addition ``x ⊕ y``: the isometry taking 0 to x, applied to y."""
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    xy = (x * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return num / den.clamp_min(MIN_NORM)


def expmap0(v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Exponential map at the origin: tangent vector -> point (not projected)."""
    sc = math.sqrt(c)
    n = _norm(v)
    return torch.tanh(sc * n) * v / (sc * n)


def logmap0(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Logarithmic map at the origin: point -> tangent vector."""
    sc = math.sqrt(c)
    n = _norm(y)
    arg = (sc * n).clamp_max(artanh_clamp(y.dtype))
    return torch.atanh(arg) * y / (sc * n)


def dist0(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Distance from the origin."""
    sc = math.sqrt(c)
    arg = (sc * _norm(x, keepdim=False)).clamp_max(artanh_clamp(x.dtype))
    return 2.0 / sc * torch.atanh(arg)


def dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Geodesic distance, ``(2/sqrt c) asinh( sqrt(c) |x-y| / sqrt((1-c|x|²)(1-c|y|²)) )``.

    The asinh form equals geoopt's ``2/sqrt(c) artanh(sqrt(c) |(-x) ⊕ y|)`` and keeps a finite
    gradient at ``x == y`` (the norm is clamped) and up to the edge of the ball.
    """
    sc = math.sqrt(c)
    diff2 = ((x - y) ** 2).sum(-1).clamp_min(MIN_NORM**2)
    lx = (1 - c * (x * x).sum(-1)).clamp_min(MIN_NORM)
    ly = (1 - c * (y * y).sum(-1)).clamp_min(MIN_NORM)
    return 2.0 / sc * torch.asinh(sc * diff2.sqrt() / (lx * ly).sqrt())


def dist_matrix(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Pairwise distances ``[n, m]`` between rows of ``x`` and ``y`` via one matrix product.

    ``|x-y|²`` comes from ``|x|² + |y|² - 2 x·y``; in float64 its absolute error (~1e-16) is
    far below the squared Euclidean gaps of distinct entity points, so rankings are exact
    enough for retrieval and evaluation. Use :func:`dist` where a gradient or the last digit
    matters.
    """
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1)
    diff2 = (x2 + y2 - 2 * x @ y.transpose(-1, -2)).clamp_min(MIN_NORM**2)
    lx = (1 - c * x2).clamp_min(MIN_NORM)
    ly = (1 - c * y2).clamp_min(MIN_NORM)
    sc = math.sqrt(c)
    return 2.0 / sc * torch.asinh(sc * (diff2 / (lx * ly)).sqrt())
