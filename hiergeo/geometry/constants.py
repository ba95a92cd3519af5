"""The one home of eps and clamps, chosen by dtype (as geoopt's ``_project`` does).

A point may sit at most ``(1 - ball_eps) / sqrt(c)`` from the origin: geoopt projects anything
further back, so hiergeo never places a point beyond that. In distance from the origin that is
about 6.2 / sqrt(c) in float32 and 12.2 / sqrt(c) in float64 (:func:`max_dist0`).
"""

from __future__ import annotations

import math

import torch

_BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5, torch.bfloat16: 4e-3,
             torch.float16: 4e-3}
#: Smallest norm used as a divisor, whatever the dtype.
MIN_NORM = 1e-15


def ball_eps(dtype: torch.dtype) -> float:
    """Margin from the boundary of the ball for ``dtype``."""
    return _BALL_EPS.get(dtype, 1e-5)


def max_dist0(dtype: torch.dtype, c: float = 1.0) -> float:
    """Largest distance from the origin a point can have and survive projection."""
    eps = ball_eps(dtype)
    return 2.0 / math.sqrt(c) * math.atanh(1.0 - eps)


def artanh_clamp(dtype: torch.dtype) -> float:
    """Largest argument passed to ``artanh`` (keeps it finite)."""
    return 1.0 - (1e-15 if dtype == torch.float64 else 1e-7)
