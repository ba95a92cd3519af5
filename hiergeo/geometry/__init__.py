"""Geometry of the Poincaré ball: plain functions (``poincare``) and their constants
(``constants``). Curvature is the positive ``c`` everywhere in hiergeo; geoopt's signed ``k``
appears only in :func:`make_ball`."""

from .constants import MIN_NORM, ball_eps, max_dist0
from .poincare import dist, dist0, dist_matrix, expmap0, logmap0, make_ball, mobius_add, project

__all__ = ["MIN_NORM", "ball_eps", "dist", "dist0", "dist_matrix", "expmap0", "logmap0",
           "make_ball", "max_dist0", "mobius_add", "project"]
