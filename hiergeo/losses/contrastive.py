"""Geo-weighted hyperbolic contrastive loss (HierLoc's objective, per level).

For one level, with logits ``s_j = -d(z, e_j) / tau``, the positive entity at column 0 and
``w_j = exp(-haversine(y, c_j) / sigma)`` for each negative (y the sample's location, c_j the
entity's centroid)::

    L = -log( exp(s_0) / (exp(s_0) + sum_{j>0} w_j exp(s_j)) )

so negatives near the true location weigh most, and far ones fade out. Computed stably as
``-s_0 + logsumexp([s_0, s_j + log w_j])``. Columns flagged invalid (padding, or a sampled
negative equal to the positive) are left out.

Following pytorch-metric-learning, the loss takes its distance as an object and turns distances
into logits by negation. Entity points stay in float64 (see CONVENTIONS.md); logits are cast to
the dtype of the query ``z``.
"""

from __future__ import annotations

import torch

from gazetteer.geo import EARTH_RADIUS_KM

from ..geometry import dist


class PoincareDistance:
    """Geodesic distance in the Poincaré ball of curvature -c, computed in float64."""

    def __init__(self, c: float = 1.0):
        if not c > 0:
            raise ValueError(f"curvature c must be positive, got {c}")
        self.c = float(c)

    def __call__(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``z`` ``[B, D]`` against candidates ``e`` ``[B, K, D]`` -> ``[B, K]``."""
        return dist(z.to(torch.float64).unsqueeze(1), e.to(torch.float64), self.c)


def haversine_km_torch(lat1, lon1, lat2, lon2) -> torch.Tensor:
    """Great-circle km between points in degrees (broadcasting), in float64."""
    p1, p2 = torch.deg2rad(lat1.double()), torch.deg2rad(lat2.double())
    dlat = p2 - p1
    dlon = torch.deg2rad(lon2.double() - lon1.double())
    a = torch.sin(dlat / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(a.clamp(0, 1).sqrt())


class GeoWeightedContrastive:
    """One level's loss; see the module docstring.

    Args:
        distance: a callable ``(z [B, D], e [B, K, D]) -> [B, K]``.
        tau: temperature.
        sigma_km: distance scale of the negative weights; ``float("inf")`` gives plain InfoNCE.
    """

    def __init__(self, distance, tau: float = 0.1, sigma_km: float = 1000.0):
        if not tau > 0 or not sigma_km > 0:
            raise ValueError(f"tau and sigma_km must be positive, got {tau}, {sigma_km}")
        self.distance = distance
        self.tau = float(tau)
        self.sigma_km = float(sigma_km)

    def __call__(self, z: torch.Tensor, cand_points: torch.Tensor, cand_latlon: torch.Tensor,
                 latlon: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        """Mean loss over the batch.

        Args:
            z: ``[B, D]`` sample embeddings in the ball.
            cand_points: ``[B, K, D]`` candidate entity points, the positive at column 0.
            cand_latlon: ``[B, K, 2]`` candidate centroids (degrees).
            latlon: ``[B, 2]`` sample locations (degrees).
            valid: ``[B, K]`` bool, False for columns to leave out (column 0 must be True).
        Returns:
            ``{"loss": scalar, "logits": [B, K]}``.
        """
        logits = (-self.distance(z, cand_points) / self.tau).to(z.dtype)
        km = haversine_km_torch(latlon[:, None, 0], latlon[:, None, 1], cand_latlon[..., 0],
                                cand_latlon[..., 1])
        log_w = (-km / self.sigma_km).to(logits.dtype)
        log_w[:, 0] = 0.0  # the positive is not weighted
        scores = logits + log_w
        if valid is not None:
            if not bool(valid[:, 0].all()):
                raise ValueError("column 0 (the positive) must be valid in every row")
            scores = scores.masked_fill(~valid, float("-inf"))
        loss = -logits[:, 0] + torch.logsumexp(scores, dim=1)
        return {"loss": loss.mean(), "logits": logits}
