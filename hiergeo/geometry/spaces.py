"""The four spaces a model can live in, as small objects over the plain functions.

``poincare`` (the default), ``lorentz`` (the same hyperbolic space in the hyperboloid model),
``euclidean`` and ``sphere``: the ablation of the published method is one config switch.
Each space knows how to

- turn the tree embedding (Poincaré points, float64) into its initial entity table
  (:meth:`Space.init_entities`), and which geoopt manifold keeps that table on the space,
- turn a head's output (a tangent vector at the origin) into a query point (:meth:`query`),
- measure distances, always in float64: per row against its own candidates (``__call__``,
  ``z [B, D]`` with ``e [B, K, D]``) or against one shared table (:meth:`matrix`).

Distances are what the loss and the prediction turn into logits by negation.
"""

from __future__ import annotations

import math

import torch

from ..registry import registrar
from .constants import MIN_NORM, max_dist0
from .poincare import _norm, dist, dist_matrix, expmap0, logmap0, make_ball, project

#: spaces by name, filled by :func:`register_space` (:mod:`hiergeo.registry`'s style, as
#: the encoders')
SPACE_CLASSES: dict = {}
register_space = registrar(SPACE_CLASSES)


def lorentz_dist_from_inner(inner: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Hyperboloid distance ``arcosh(-c <x, y>) / sqrt(c)`` from the Minkowski inner product
    ``<x, y> = -x0 y0 + x1 y1 + ...`` (any shape, float64).

    The argument is clamped at ``1 + 1e-15`` (identical points: distance ~4.5e-8, zero
    gradient). Near-identical points lose digits in the inner product itself (its rounding,
    ~1e-16 x0 y0, becomes ``sqrt(2 x 1e-16 x0 y0)`` of distance), whichever form computed it.
    """
    arg = (-c * inner).clamp_min(1.0 + 1e-15)
    # arcosh(a) = log(a + sqrt(a² - 1)); (a-1)(a+1) keeps digits near a = 1
    return torch.log(arg + ((arg - 1) * (arg + 1)).clamp_min(MIN_NORM**2).sqrt()) / math.sqrt(c)


def sphere_dist_from_chords(minus2: torch.Tensor, plus2: torch.Tensor,
                            radius: float = 1.0) -> torch.Tensor:
    """Great-circle distance ``radius x angle`` between unit vectors x, y from the squared
    chords ``minus2 = |x - y|²`` and ``plus2 = |x + y|²`` (any shape, float64).

    The angle is ``2 atan2(|x - y|, |x + y|)`` (equal to ``2 asin(|x - y| / 2)`` for unit
    vectors): accurate from identical points to antipodes, where asin's slope is infinite,
    and with gradients bounded by 1 per unit of chord at both ends. Both squares are clamped
    at ``MIN_NORM²`` before the root (identical points: distance ``radius x 5e-16``).
    """
    return 2 * radius * torch.atan2(minus2.clamp_min(MIN_NORM**2).sqrt(),
                                    plus2.clamp_min(MIN_NORM**2).sqrt())


class Space:
    """Base class; see the module docstring. ``c`` is the (positive) curvature where used."""

    name = "base"

    def __init__(self, c: float = 1.0, max_radius: float | None = None):
        if not c > 0:
            raise ValueError(f"curvature c must be positive, got {c}")
        self.c = float(c)
        # how far from the origin a query may go, in the space's own distance
        self.max_radius = float(max_radius if max_radius is not None
                                else 0.98 * max_dist0(torch.float64, self.c))

    def point_dim(self, dim: int) -> int:
        """Coordinates per point for a ``dim``-dimensional space."""
        return dim

    def manifold(self):
        raise NotImplementedError

    def init_entities(self, ball_points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def query(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between broadcast rows of ``x`` and ``y`` (float64)."""
        raise NotImplementedError

    def __call__(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``z [B, D]`` against ``e [B, K, D]`` -> ``[B, K]`` float64."""
        return self.pair(z.to(torch.float64).unsqueeze(1), e.to(torch.float64))

    def matrix(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``z [B, D]`` against one table ``e [N, D]`` -> ``[B, N]`` float64.

        This fallback broadcasts :meth:`pair` through a ``[B, N, D]`` tensor; every space
        overrides it with one matrix product, equal to :meth:`pair` but for rounding: the gap
        between near-identical points (and, on the sphere, near-antipodal ones) comes from a
        difference of products, so it loses digits there (tests/test_geometry.py bounds it).
        """
        return self.pair(z.to(torch.float64).unsqueeze(1), e.to(torch.float64).unsqueeze(0))

    def _clip(self, v: torch.Tensor, limit: float) -> torch.Tensor:
        v = v.to(torch.float64)
        n = _norm(v)
        return torch.where(n > limit, v / n * limit, v)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(c={self.c:g}, max_radius={self.max_radius:.2f})"


@register_space("poincare")
class Poincare(Space):
    """Poincaré ball of curvature -c. Queries are ``expmap0`` of the tangent vector, whose
    norm is clipped so the point lies at most ``max_radius`` from the origin (the
    distance from the origin of ``expmap0(v)`` is ``2 |v|`` whatever c)."""

    name = "poincare"

    def manifold(self):
        return make_ball(self.c)

    def init_entities(self, ball_points):
        return project(ball_points.to(torch.float64), self.c)

    def query(self, v):
        return project(expmap0(self._clip(v, self.max_radius / 2), self.c), self.c)

    def pair(self, x, y):
        return dist(x, y, self.c)

    def matrix(self, z, e):
        return dist_matrix(z.to(torch.float64), e.to(torch.float64), self.c)


@register_space("lorentz")
class Lorentz(Space):
    """The hyperboloid ``-x0² + |x|² = -1/c``, ``x0 > 0`` (geoopt's ``Lorentz(k=1/c)``).
    Same space as the ball, other coordinates: a check that results do not hinge on the
    Poincaré model's numerics near the edge."""

    name = "lorentz"

    def point_dim(self, dim):
        return dim + 1

    def manifold(self):
        from .poincare import import_geoopt

        geoopt = import_geoopt()

        return geoopt.Lorentz(k=torch.tensor(1.0 / self.c, dtype=torch.float64))

    def init_entities(self, ball_points):
        p = ball_points.to(torch.float64)
        p2 = (p * p).sum(-1, keepdim=True)
        den = (1 - self.c * p2).clamp_min(MIN_NORM)
        x0 = (1 + self.c * p2) / den / math.sqrt(self.c)
        return torch.cat([x0, 2 * p / den], dim=-1)

    def query(self, v):
        sc = math.sqrt(self.c)
        v = self._clip(v, self.max_radius)  # here distance from the origin is |v|
        n = _norm(v)
        return torch.cat([torch.cosh(sc * n) / sc, torch.sinh(sc * n) * v / (sc * n)], dim=-1)

    def pair(self, x, y):
        return lorentz_dist_from_inner(-x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1),
                                       self.c)

    def matrix(self, z, e):
        z, e = z.to(torch.float64), e.to(torch.float64)
        # the Minkowski inner product as one matrix product: flip the sign of z's time column
        return lorentz_dist_from_inner(torch.cat([-z[:, :1], z[:, 1:]], dim=1) @ e.T, self.c)


@register_space("euclidean")
class Euclidean(Space):
    """Flat space. Entities start at ``2 logmap0`` of their ball points, so each keeps its
    distance from the origin and its direction; only the metric changes."""

    name = "euclidean"

    def manifold(self):
        from .poincare import import_geoopt

        geoopt = import_geoopt()

        return geoopt.Euclidean()

    def init_entities(self, ball_points):
        return 2 * logmap0(ball_points.to(torch.float64), self.c)

    def query(self, v):
        return self._clip(v, self.max_radius)

    def pair(self, x, y):
        return ((x - y) ** 2).sum(-1).clamp_min(MIN_NORM**2).sqrt()

    def matrix(self, z, e):
        z, e = z.to(torch.float64), e.to(torch.float64)
        d2 = (z * z).sum(-1, keepdim=True) + (e * e).sum(-1) - 2 * z @ e.T
        return d2.clamp_min(MIN_NORM**2).sqrt()


@register_space("sphere")
class Sphere(Space):
    """The sphere of radius ``radius`` (distance = radius x angle). Entities start at the
    directions of their ball points; the radius sets the distance scale the temperatures see
    (the default 7.5 puts antipodes 23.6 apart, about the ball's spread between cities)."""

    name = "sphere"

    def __init__(self, c: float = 1.0, max_radius: float | None = None, radius: float = 7.5):
        super().__init__(c, max_radius)
        if not radius > 0:
            raise ValueError(f"sphere radius must be positive, got {radius}")
        self.radius = float(radius)

    def manifold(self):
        from .poincare import import_geoopt

        geoopt = import_geoopt()

        return geoopt.Sphere()

    def init_entities(self, ball_points):
        p = ball_points.to(torch.float64)
        return p / _norm(p)

    def query(self, v):
        v = v.to(torch.float64)
        return v / _norm(v)

    def pair(self, x, y):
        return sphere_dist_from_chords(((x - y) ** 2).sum(-1), ((x + y) ** 2).sum(-1),
                                       self.radius)

    def matrix(self, z, e):
        z, e = z.to(torch.float64), e.to(torch.float64)
        n2 = (z * z).sum(-1, keepdim=True) + (e * e).sum(-1)
        ze2 = 2 * z @ e.T
        return sphere_dist_from_chords(n2 - ze2, n2 + ze2, self.radius)


def make_space(name: str, c: float = 1.0, max_radius: float | None = None,
               sphere_radius: float = 7.5) -> Space:
    """A space by name (one of :data:`SPACES`); ``sphere_radius`` is the sphere's only."""
    if name not in SPACE_CLASSES:
        raise ValueError(f"geometry must be one of {tuple(SPACE_CLASSES)}, not {name!r}")
    kwargs = {"radius": sphere_radius} if name == "sphere" else {}
    return SPACE_CLASSES[name](c, max_radius, **kwargs)


#: the shipped spaces' names, in the order they are defined (the default first); a space
#: registered later is in SPACE_CLASSES, which make_space and the config read
SPACES = tuple(SPACE_CLASSES)
