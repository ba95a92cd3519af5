"""The shipped loss functions of one level, registered by name for ``loss.function``
(:mod:`hiergeo.losses.objective` explains the interface).

- ``geo``: HierLoc's geo-weighted contrastive loss (:class:`GeoWeightedContrastive`), the
  shipped one.
- ``proxy_anchor``, ``contrastive``: pytorch-metric-learning's ``ProxyAnchorLoss`` and
  ``ContrastiveLoss`` over the same entities in the same space
  (:func:`hiergeo.losses.ablations.ablation`), for ablations.
"""

from __future__ import annotations

import torch

from .contrastive import GeoWeightedContrastive, block_size
from .objective import LevelLoss, LevelQueries, LevelSetup, register_loss


@register_loss("geo")
class GeoLevel(LevelLoss):
    """Level ``j``'s geo-weighted loss over the negatives ``loss.scope`` names: each
    positive's siblings (``siblings``), or the level (``level``), whole (entity blocks sized
    from the memory budget, so memory is bounded whatever the level's size) or as sampled
    candidates (:mod:`hiergeo.losses.candidates`)."""

    samples_candidates = True

    def __init__(self, setup: LevelSetup):
        super().__init__(setup)
        c, j = setup.cfg, setup.level
        self.fn = GeoWeightedContrastive(setup.space, c.tau[j], c.sigma_km[j], c.lam[j],
                                         c.weight_form)

    def __call__(self, q: LevelQueries) -> torch.Tensor:
        cfg, hier, fn = self.cfg, self.hier, self.fn
        if q.scalars:
            fn = fn.with_scalars(**q.scalars)
        if cfg.scope == "siblings":
            qi, cand, is_pos = hier.sibling_pairs(q.positive)
            return fn.grouped(q.z, q.rows(cand), hier.latlon[cand], q.latlon, qi, is_pos,
                              check=False)["loss"]
        if self.setup.full:
            tbl = hier.level_ids[q.level]
            block = block_size(len(q.z), len(tbl), q.z.device, self.setup.budget_bytes)
            return fn.full(q.z, q.rows(tbl), hier.latlon[tbl], q.latlon,
                           hier.pos_in_level[q.positive], block=block)["loss"]
        cand, valid, log_share = self.setup.sampler.sample(
            q.positive, q.level, cfg.n_siblings, cfg.n_cousins, cfg.n_random, q.gen)
        return fn(q.z, q.rows(cand), hier.latlon[cand], q.latlon, valid, log_share)["loss"]


class _PMLAblation(LevelLoss):
    """A pytorch-metric-learning loss over the level's reference entities: with
    ``loss.scope=siblings`` every sibling of the batch's positives (the union of the groups
    the shipped loss scores one by one), with ``level`` the whole level (``loss.candidates``
    does not apply). PML scores every query against every reference at once, about 100 bytes
    per pair at the peak (:data:`hiergeo.losses.ablations.PEAK_BYTES_PER_PAIR`), not streamed:
    an ablation for small runs, not for OSV-5M's 165k cities at a GPU's batch. The union
    (``torch.unique``), the label check, PML's miner and ``ProxyAnchorLoss`` wait on the
    device at each level, which the shipped loss avoids."""

    function: str = ""

    def __init__(self, setup: LevelSetup):
        super().__init__(setup)
        from .ablations import ablation  # here: loading pytorch-metric-learning takes 0.7 s

        self.fn = ablation(self.function, setup.space, setup.cfg.tau[setup.level],
                           setup.cfg.margin)

    def __call__(self, q: LevelQueries) -> torch.Tensor:
        hier = self.hier
        if self.cfg.scope == "siblings":
            ref = torch.unique(hier.sibling_pairs(q.positive)[1])  # sorted, positives in it
            labels = torch.searchsorted(ref, q.positive)
        else:
            ref, labels = hier.level_ids[q.level], hier.pos_in_level[q.positive]
        return self.fn(q.z, labels, q.rows(ref))


@register_loss("proxy_anchor")
class ProxyAnchorLevel(_PMLAblation):
    """PML's ``ProxyAnchorLoss`` with the entity points as proxies (``alpha = 1 / tau``)."""

    function = "proxy_anchor"
    default_margin = 0.1  # PML's ProxyAnchorLoss default


@register_loss("contrastive")
class ContrastiveLevel(_PMLAblation):
    """PML's ``ContrastiveLoss`` on ``MultiSimilarityMiner``'s pairs of queries and entity
    points."""

    function = "contrastive"
    default_margin = 1.0  # PML's ContrastiveLoss default negative margin
